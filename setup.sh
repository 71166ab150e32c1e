#!/usr/bin/env bash
# Create .venv with the pinned packages and this package (editable). Idempotent.
# On a GPU machine: TORCH_CUDA=cu128 ./setup.sh installs the CUDA build of the pinned torch first
# (any CUDA tag that download.pytorch.org lists for torch 2.13.0 and your driver supports).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_CUDA:-}" ]; then
  torch=$(grep -E '^torch==' requirements.txt)
  .venv/bin/python -m pip install --quiet "$torch" --index-url "https://download.pytorch.org/whl/$TORCH_CUDA"
fi
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
echo "seqmux environment ready: $(pwd)/.venv"
