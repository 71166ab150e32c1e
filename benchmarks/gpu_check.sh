#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: installs what it needs, then prints, each with the
# device's name,
#   1. the fast-ISM benchmark on CUDA (fast vs naive ISM, deviation from float64; tangermeme's
#      fast=True and fast=False beside them when it installs), Beluga and the Basset-like model;
#   2. the tiny workflow with `device: cuda` for targets, training (AMP on) and evaluation:
#      the jobs' device lines, the training's mixed precision, the evaluation's speed figures.
# Fails with one line when no CUDA GPU answers. Meant to finish within 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; results on stdout
#   bash benchmarks/gpu_check.sh > benchmarks/gpu_results.txt 2>&1
#
# On a GPU node without internet (most clusters' compute nodes), name a Python that already has a
# CUDA build of torch and the workflow's packages (a module, a container, a venv made on a login
# node); nothing is installed then and this checkout is put on its PYTHONPATH:
#   SEQMUX_PYTHON=/path/to/python3 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi finds none): run it on a GPU node" >&2
  exit 1
fi
nvidia-smi -L

if [ -n "${SEQMUX_PYTHON:-}" ]; then
  # an existing environment: nothing installed, this checkout's seqmux first on the path
  PY=$SEQMUX_PYTHON
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  # the environment: the CUDA build of the pinned torch (the CPU wheel has no CUDA), then the rest
  PYTHON=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # PyPI's torch for Linux is the CUDA build; a CPU build already installed must go first
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip uninstall --quiet -y torch 2>/dev/null || true
    .venv/bin/python -m pip install --quiet --no-cache-dir "torch==2.13.0" \
      || .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
  fi
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  .venv/bin/python -m pip install --quiet -r benchmarks/requirements.txt || echo "gpu_check: tangermeme did not install: its columns are left out"
  PY=.venv/bin/python
fi
"$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch %s sees no CUDA device" % torch.__version__)
print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device 0: {torch.cuda.get_device_name(0)}")
EOF

echo "== 1. fast ISM on CUDA (benchmarks/fast_ism.py --device cuda)"
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" timeout 300 "$PY" benchmarks/fast_ism.py --device cuda --models beluga,basset \
  --rounds 2 --naive-sample 600 --chunk 4096 --tangermeme-batches 512,2048

echo "== 2. tiny workflow on CUDA: targets, training (AMP), evaluation"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/gpu.yaml" <<'EOF'
tracks: []
genome: {demo: {chromosomes: {chr1: 60000, chr2: 60000, chr3: 60000, chr4: 60000, chr5: 60000, chr6: 60000,
                              chr7: 60000, chr8: 60000, chr9: 60000}}}
windows: {length: 400, count: {train: 96, validation: 16, test: 16}}
targets: {device: cuda, shards: 2}
multiplexer:
  train: {device: cuda, amp: true, steps: 200, batch_size: 16, validate_every: 50}
  evaluate: {device: cuda, speed_windows: 8}
EOF
timeout 300 "$PY" -m snakemake --snakefile "$PWD/Snakefile" --directory "$work" --configfile "$work/gpu.yaml" \
  --cores 4 --resources gpu=1 -q
grep -h -i "cuda\|device\|autocast\|amp\|precision" "$work"/logs/compute_targets.*.log "$work"/logs/train_multiplexer.log \
  "$work"/logs/evaluate_multiplexer.log | head -20
"$PY" - "$work/results/multiplexer/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
s = m["speed"]
print(f"evaluation on {s['device']}: weighted Pearson {m['weighted_pearson_mean']:.3f}; Multiplexer "
      f"{s['multiplexer_ms_per_window']} ms/window, fast exact ISM {s['fast_ism_ms_per_window']} ms/window "
      f"({s['speedup_vs_fast_ism']}x), naive ISM {s['ism_ms_per_window']} ms/window ({s['speedup']}x)")
EOF
echo "gpu_check: done in $(( $(date +%s) - start )) s"
