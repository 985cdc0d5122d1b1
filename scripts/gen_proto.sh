#!/usr/bin/env bash
# Regenerate the gRPC code of dyno/runtime/proto/inference.proto (the `make proto` of this repo).
# The generated files are committed; regenerate after editing the .proto and commit both.
# Last generated with grpcio-tools 1.85.1 (protoc gencode 7.35.1): importing the result needs
# protobuf >= 7.35.1 and grpcio >= 1.85.1 at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  dyno/runtime/proto/inference.proto
echo "generated with grpcio-tools $("$PY" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
