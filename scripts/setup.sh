#!/usr/bin/env bash
# One-shot set-up on a fresh machine: the Fashion-MNIST Debian package (when apt is usable),
# a virtual environment in .venv, and dyno installed editable with its full (torch), test and Ray extras.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
            || echo "setup: could not install dataset-fashion-mnist; pass --data DIR to dyno instead" >&2
    else
        echo "setup: not root; install dataset-fashion-mnist yourself or pass --data DIR" >&2
    fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch==2.13.0 is pinned in pyproject: pip takes the CPU wheel from the local wheel store.
.venv/bin/pip install -q --disable-pip-version-check -e '.[full,test,ray]'
echo "setup: done (.venv)"
