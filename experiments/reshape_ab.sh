#!/usr/bin/env bash
# Issue 9's check that reshaping changed no behaviour or speed: the same bundle evaluated by the code
# before the reshape (commit d8ebe42) and by this checkout, on the same images, one after the other,
# then served by both clusters. Output: docs/results/reshape/*.json (see docs/results.md, "Reshape").
# Usage: experiments/reshape_ab.sh BUNDLE   (a bundle built by the old code, re-planned quietly:
#   PYTHONPATH=../old .venv/bin/python -m gati.cli plan --bundle B --device cpu --out B-q)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:?bundle}
DATA=${SHARED:-../shared}/data
OUT=docs/results/reshape
OLD=../old
[ -d "$OLD" ] || git worktree add --detach "$OLD" d8ebe42
mkdir -p "$OUT"
old() { (cd "$OLD" && PYTHONPATH=. "$OLDPWD/.venv/bin/python" -m gati.cli "$@"); }
new() { .venv/bin/python -m gati "$@"; }
old eval --bundle "$BUNDLE" --data-dir "$DATA" --split test:eval --json > "$OUT/r18-97-old-code.json"
new eval --bundle "$BUNDLE" --data-dir "$DATA" --split test:eval --json > "$OUT/r18-97-new-code.json"
for seed in 1 2 3; do   # alternate old and new on the same subsets: the machine's speed drifts
  new eval --bundle "$BUNDLE" --data-dir "$DATA" --split test:eval --json --limit 1500 --seed $seed > "$OUT/ab-new-$seed.json"
  old eval --bundle "$BUNDLE" --data-dir "$DATA" --split test:eval --json --limit 1500 --seed $seed > "$OUT/ab-old-$seed.json"
done
mkdir -p bundles && ln -sfn "$(realpath "$BUNDLE")" bundles/r18
make deploy-local >/dev/null
new bench --bundle bundles/r18 --endpoint 127.0.0.1:9090 --data-dir "$DATA" --limit 500 --concurrency 1,8 --json > "$OUT/cluster-bench.json"
new bench --bundle bundles/r18 --data-dir "$DATA" --limit 500 --concurrency 1,8 --json > "$OUT/inprocess-bench.json"
make stop-local >/dev/null
(cd "$OLD" && mkdir -p bundles && ln -sfn "$(realpath "$OLDPWD/$BUNDLE" 2>/dev/null || realpath "$BUNDLE")" bundles/r18 \
  && PYTHONPATH=. "$OLDPWD/.venv/bin/python" deploy/local.py start --config deploy/local.yaml >/dev/null)
for c in 1 8; do old bench --bundle "$BUNDLE" --endpoint 127.0.0.1:9090 --data-dir "$DATA" --limit 500 --concurrency $c --json > "$OUT/old-cluster-c$c.json"; done
old bench --bundle "$BUNDLE" --data-dir "$DATA" --limit 500 --concurrency 1 --json > "$OUT/old-inproc-c1.json"
(cd "$OLD" && PYTHONPATH=. "$OLDPWD/.venv/bin/python" deploy/local.py stop --config deploy/local.yaml >/dev/null)
