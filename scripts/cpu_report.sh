#!/usr/bin/env bash
# Print which CPU this run is on: its model, cores and the instruction-set features that change the suite's numbers
# and speed (AVX2/FMA, AVX-512, VNNI, BF16, AMX). Every CI log then says which kind of machine it ran on.
set -euo pipefail
model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2-) "
have=()
for f in avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile; do
    case "$flags" in *" $f "*) have+=("$f") ;; esac
done
echo "cpu: ${model:-unknown}; $(nproc) cores; features: ${have[*]:-none of avx2/avx512/amx}"
case "$flags" in
    *" avx512f "*) echo "cpu: AVX-512 machine (the fast kind)" ;;
    *) echo "cpu: no AVX-512 (the slow kind: the suite takes about three times longer here)" ;;
esac
