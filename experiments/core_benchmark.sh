#!/usr/bin/env bash
# The core benchmark of docs/results.md: for each shared base model, re-profile the bundle on this
# machine (quiet), evaluate the full test:eval half at 0.97, re-target to 0.99 and evaluate again.
# Usage: experiments/core_benchmark.sh [MODEL...]   (bundles built by the commands in docs/results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
GATI=.venv/bin/gati
DATA=${SHARED:-../shared}/data
OUT=docs/results
mkdir -p "$OUT"
for model in "${@:-r18 r50}"; do
  for m in $model; do
    $GATI plan --bundle bundles/$m --device cpu > "$OUT/$m-97-plan.txt"
    $GATI eval --bundle bundles/$m --data-dir "$DATA" --split test:eval --json > "$OUT/$m-97.json"
    $GATI calibrate --bundle bundles/$m --target 0.99 --out bundles/$m-99 > "$OUT/$m-99-plan.txt"
    $GATI eval --bundle bundles/$m-99 --data-dir "$DATA" --split test:eval --json > "$OUT/$m-99.json"
  done
done
