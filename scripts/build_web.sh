#!/usr/bin/env bash
# Build the web viewer (web/) into services/medsam2/gateway/static/, which ships with the Python package.
# The bundle is generated, not committed: `npm ci` installs exactly package-lock.json, esbuild bundles NiiVue and
# the page. Skips the work when the bundle is newer than every source file. Needs node >= 18 and npm.
set -euo pipefail
cd "$(dirname "$0")/../web"
out=../services/medsam2/gateway/static
if ! command -v npm >/dev/null 2>&1; then
    echo "build_web.sh: npm not found: the web viewer is not built (the gateway's API still works)" >&2
    exit 0
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f "$out/app.js" ] || [ -n "$(find src build.mjs package-lock.json -newer "$out/app.js" -print -quit)" ]; then
    node build.mjs "$out"
fi
# OHIF (the pinned @ohif/app tarball, sha256-checked) with the MedSAM2 extension, served at /ohif/.
ohif_out=../services/medsam2/gateway/ohif
if [ ! -f "$ohif_out/medsam2/extension.js" ] || [ -n "$(find ohif/src ohif/build.mjs ohif/ohif.json -newer "$ohif_out/medsam2/extension.js" -print -quit)" ]; then
    node ohif/build.mjs "$ohif_out"
fi
