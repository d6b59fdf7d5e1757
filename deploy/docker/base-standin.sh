#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull it: Debian bookworm minbase made
# with mmdebstrap, Debian's Python 3.11 in a venv at /usr/local (so python, pip and console scripts live where the
# official image has them), ca-certificates for pip. Writes an OCI-importable tarball to $1.
# This file is the recipe: scripts/build_images.sh keys the cached stand-in on its sha256.
set -euo pipefail
out="$1"
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --include=python3,python3-venv,ca-certificates,netbase,tzdata,passwd \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    bookworm "$out" http://deb.debian.org/debian
