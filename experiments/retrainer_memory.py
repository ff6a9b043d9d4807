"""Is the retrainer's memory bounded once its sample rings are full? Feed it `--fill` times its capacity.

    python experiments/retrainer_memory.py --bundle bundles/sweep/resnet18-cifar10-cpu --fill 3 \
        --out docs/results/retrainer_memory.json

The retrainer's handler (gati/rpc/retrainer.py) is built in this process for the bundle's plan, without a
server or predictors, and receives `add_samples` messages as the aggregator sends them (one sampled request:
every planned cut's features, the base label and logits; random values of the right shapes, checked at the door
like any). Its resident memory is read from /proc every `--every` messages. A 30-minute soak cannot show
flatness when the ring of a cut with small features is still filling at the end; this fills every ring
`--fill` times over in a few minutes. At the end it times one snapshot of every ring (what a state directory
costs each `snapshot_s` under steady traffic).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gati.bundle import read_bundle  # noqa: E402
from gati.measure.environment import environment  # noqa: E402
from gati.rpc.config import RetrainerConfig  # noqa: E402
from gati.rpc.gen.gati_idl.ttypes import Sample  # noqa: E402
from gati.rpc.retrainer import CutState, RetrainerHandler  # noqa: E402
from gati.rpc.tensors import to_tensor  # noqa: E402


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--fill", type=float, default=3.0, help="messages sent, in multiples of the largest ring")
    p.add_argument("--every", type=int, default=500, help="messages between memory readings")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()

    info = read_bundle(a.bundle)
    caches = info.plan_caches()
    cuts = {e.cut: CutState(e.cut, e.cut_name, e.threshold, caches[e.cut], 0, None) for e in info.plan.entries}
    classes = info.manifest.num_classes
    snapshots = Path(tempfile.mkdtemp(prefix="gati-retrainer-memory-"))
    handler = RetrainerHandler(cuts, RetrainerConfig(host="127.0.0.1", port=1), classes, samples_dir=snapshots,
                               info=info)
    capacity = {st.cut_name: st.samples.capacity for st in cuts.values()}
    messages = int(a.fill * max(capacity.values()))
    rng = np.random.default_rng(0)
    readings = [{"messages": 0, "rss_mb": round(rss_mb(), 1)}]
    started = time.monotonic()
    for i in range(1, messages + 1):
        label = int(rng.integers(classes))
        logits = to_tensor(rng.standard_normal(classes).astype(np.float32))
        handler.add_samples([Sample(cut, to_tensor(rng.standard_normal(st.cache.feat_shape).astype(np.float32)),
                                    label, logits) for cut, st in cuts.items()])
        if i % a.every == 0:
            readings.append({"messages": i, "rss_mb": round(rss_mb(), 1),
                             "held": {st.cut_name: len(st.samples) for st in cuts.values()}})
    t = time.monotonic()
    handler.snapshot()  # what a state directory costs every snapshot_s when every ring changed
    snapshot = {"seconds": round(time.monotonic() - t, 2),
                "mb": round(sum(f.stat().st_size for f in snapshots.iterdir()) / 2**20, 1)}
    shutil.rmtree(snapshots)
    full_at = max(capacity.values())
    after = [r["rss_mb"] for r in readings if r["messages"] >= full_at]
    result = {"bundle": str(a.bundle), "capacity": capacity, "messages": messages, "seconds":
              round(time.monotonic() - started, 1), "rss_when_full_mb": after[0] if after else None,
              "rss_last_mb": readings[-1]["rss_mb"], "snapshot": snapshot,
              "rss_range_after_full_mb": [min(after), max(after)] if after else None,
              "readings": readings, "environment": environment(), "argv": sys.argv[1:]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("readings", "environment")}, indent=1))


if __name__ == "__main__":
    main()
