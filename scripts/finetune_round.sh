#!/usr/bin/env bash
# One round of the annotation loop on the project's synthetic data, on the CPU, with the public CLI only:
#   synthetic training set + held-out set (other seed) -> evaluate the base checkpoint on the held-out set
#   -> finetune --freeze-encoder -> evaluate the result -> export the base as version 1 and the result as 2.
# Prints loss first/last, held-out DSC/NSD before/after and the seconds of each phase.
#
#   scripts/finetune_round.sh WORK_DIR [SEED]
#
# The base is a seeded random-init checkpoint (real weights cannot be downloaded here), so the round uses
# --lr-scale (the paper's learning rates suit trained weights). Knobs: STEPS, CLIP, LR_SCALE, JITTER, SIZE, SLICES,
# TRAIN_VOLUMES, HELD_VOLUMES, BASE_SEED, PYTHON (environment variables).
set -euo pipefail

work=${1:?usage: scripts/finetune_round.sh WORK_DIR [SEED]}
seed=${2:-0}
steps=${STEPS:-300}
clip=${CLIP:-2}
lr_scale=${LR_SCALE:-10}
jitter=${JITTER:-0}
size=${SIZE:-48}
slices=${SLICES:-12}
train_volumes=${TRAIN_VOLUMES:-6}
held_volumes=${HELD_VOLUMES:-4}
base_seed=${BASE_SEED:-11}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
export PYTHONPATH="$root/services:$root/export${PYTHONPATH:+:$PYTHONPATH}"
export MEDSAM2_HOME=${MEDSAM2_HOME:-$work/home}
medsam2() { "$python" -m medsam2.cli.main "$@"; }
now() { date +%s.%N; }
since() { "$python" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$1" "$(now)"; }

if [[ -e $work/new.pt || -e $work/repo ]]; then
  echo "$work already holds a round (new.pt or repo/): give an empty or new folder" >&2
  exit 2
fi
mkdir -p "$work"
medsam2 dataset synthetic --out "$work/train" --volumes "$train_volumes" --videos 0 --slices "$slices" --size "$size" --seed 1 >/dev/null
medsam2 dataset synthetic --out "$work/held_out" --volumes "$held_volumes" --videos 0 --slices "$slices" --size "$size" --seed 2 >/dev/null
medsam2 checkpoint random --seed "$base_seed" --out "$work/base.pt" 2>/dev/null

t=$(now)
medsam2 evaluate "$work/held_out" --checkpoint "$work/base.pt" --out "$work/eval_base" --json --no-progress >"$work/eval_base.json"
eval_base_s=$(since "$t")

t=$(now)
medsam2 finetune --checkpoint "$work/base.pt" --dataset "$work/train" --out "$work/new.pt" --steps "$steps" \
  --clip-length "$clip" --jitter "$jitter" --freeze-encoder --lr-scale "$lr_scale" --seed "$seed" --json --no-progress >"$work/finetune.json"
finetune_s=$(since "$t")

t=$(now)
medsam2 evaluate "$work/held_out" --checkpoint "$work/new.pt" --out "$work/eval_new" --json --no-progress >"$work/eval_new.json"
eval_new_s=$(since "$t")

medsam2 export --checkpoint "$work/base.pt" --out "$work/repo" --version 1 >/dev/null
medsam2 export --checkpoint "$work/new.pt" --out "$work/repo" --version 2 >/dev/null

"$python" - "$work" "$seed" "$eval_base_s" "$finetune_s" "$eval_new_s" <<'EOF'
import json, sys
from pathlib import Path

work, seed = Path(sys.argv[1]), int(sys.argv[2])
base_s, finetune_s, new_s = sys.argv[3:6]
ft = json.loads((work / "finetune.json").read_text())
before = json.loads((work / "eval_base.json").read_text())["summary"]["overall"]
after = json.loads((work / "eval_new.json").read_text())["summary"]["overall"]
losses = ft["losses"]
k = max(1, len(losses) // 10)
median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731 - robust to the clips whose object score gates a mask
versions = sorted(p.name for p in (work / "repo" / "image_encoder").iterdir() if p.name.isdigit())
print(json.dumps({
    "seed": seed,
    "steps": ft["steps"],
    "loss_first": round(losses[0], 4),
    "loss_last": round(losses[-1], 4),
    f"loss_median_first_{k}": round(median(losses[:k]), 4),
    f"loss_median_last_{k}": round(median(losses[-k:]), 4),
    "loss_max": round(max(losses), 2),
    "dsc_before": {"median": before["dsc"]["median"], "mean": before["dsc"]["mean"]},
    "dsc_after": {"median": after["dsc"]["median"], "mean": after["dsc"]["mean"]},
    "nsd_before": {"median": before["nsd"]["median"], "mean": before["nsd"]["mean"]},
    "nsd_after": {"median": after["nsd"]["median"], "mean": after["nsd"]["mean"]},
    "seconds": {"evaluate_base": int(base_s), "finetune": int(finetune_s), "evaluate_new": int(new_s)},
    "exported_versions": versions,
}))
EOF
