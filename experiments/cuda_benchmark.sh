#!/usr/bin/env bash
# GPU rows of docs/results.md: re-profile a bundle on CUDA (stages, lookups and the base model as CUDA
# graphs), re-plan it there, then replay test:eval at batch 1 against the one-graph baseline.
# Usage: experiments/cuda_benchmark.sh BUNDLE DATA_DIR OUT_DIR [GATI...]
#   GATI: the command that runs the CLI (default .venv/bin/gati; e.g. "python3 -m gati.cli").
set -euo pipefail
bundle=$1 data=$2 out=$3
shift 3
gati=${*:-.venv/bin/gati}
name=$(basename "$bundle")
mkdir -p "$out"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" > "$out/$name-cuda-device.txt"
$gati plan --bundle "$bundle" --device cuda --out "$bundle-cuda" > "$out/$name-cuda-plan.txt"
$gati eval --bundle "$bundle-cuda" --data-dir "$data" --split test:eval --device cuda --json > "$out/$name-cuda.json"
$gati calibrate --bundle "$bundle-cuda" --target 0.99 --out "$bundle-cuda-99" > "$out/$name-cuda-99-plan.txt"
$gati eval --bundle "$bundle-cuda-99" --data-dir "$data" --split test:eval --device cuda --json > "$out/$name-cuda-99.json"
