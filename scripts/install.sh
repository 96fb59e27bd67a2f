#!/usr/bin/env bash
# Install genrec into ./.venv from nothing. CPU machines get the CPU build of torch first
# (a bare `torch` would pull a multi-GB CUDA build); set GENREC_TORCH to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${GENREC_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev]"
echo "genrec installed in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
