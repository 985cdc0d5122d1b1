#!/usr/bin/env bash
# Size of a device install (dyno[device]: onnxruntime, no torch) against the full install (dyno[full]),
# each in a fresh virtual environment, from the same package index pip uses here. Prints one line per
# install (site-packages MiB, packages), checks that the device install holds no torch, and runs
# `dyno --help` there. Usage: scripts/install-size.sh [WORKDIR]   (default: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${1:-$(mktemp -d)}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
for extra in device full; do
    "$PY" -m venv "$WORK/$extra"
    "$WORK/$extra/bin/pip" install -q --disable-pip-version-check "$REPO[$extra]" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    site=$("$WORK/$extra/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mib=$(du -sm "$site" | cut -f1)
    count=$("$WORK/$extra/bin/pip" list --format=freeze 2>/dev/null | wc -l)
    echo "dyno[$extra]: site-packages $mib MiB, $count packages ($site)"
done
if "$WORK/device/bin/python" -c 'import torch' 2>/dev/null; then
    echo "device install: torch IS importable (it should not be)"; exit 1
fi
"$WORK/device/bin/dyno" profile --help >/dev/null
echo "device install: torch not importable; dyno --help and dyno profile --help run"
