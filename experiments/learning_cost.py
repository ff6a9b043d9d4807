"""Does learning slow serving? The same load with learning off and on, in process and through a local cluster.

For each placement and each `--concurrency` level, `gati bench` (gati.measure.bench) sends the same requests,
closed loop, from uint8 pixels to the label:

- in process: the frozen engine, then the learner (`gati bench --online`: the coin, shadow checks, the neighbour
  tier and refits on its own threads beside the clients);
- cluster: deploy/local.yaml's services as local processes (experiments/sweep/cluster.py), frozen (the bundle's
  caches, no refits, no tier), then learning (the aggregator's coin at `--sample-rate`, the retrainer's refits
  every `--refit-every` joint samples re-certified on `--certify-samples`, the online tier).

Every request is a different image (`--requests` of the test:eval half, none repeated), so the tier has nothing
to answer and what shows is what learning costs, not what it gains: the shadow runs, refits and reviews
competing with serving for the cores. The learner's refits start as soon as it has samples, so every learning
measurement includes them.

    python experiments/learning_cost.py --bundle bundles/sweep/resnet18-cifar10-cpu --data-dir ../shared/data \\
        --concurrency 1 8 --out docs/results/learning/cost-r18.json

Run it on a quiet machine: the numbers are latencies, and another busy process ruins them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments.sweep.cluster import Refits, local_cluster  # noqa: E402
from gati.learning.online import OnlineConfig  # noqa: E402
from gati.measure.bench import BenchConfig, BenchResult, run_bench  # noqa: E402
from gati.measure.environment import environment  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--requests", type=int, default=2000, help="per measurement, each a different image")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--sample-rate", type=float, default=0.4)
    p.add_argument("--refit-every", type=int, default=300)
    p.add_argument("--select-samples", type=int, default=100)
    p.add_argument("--certify-samples", type=int, default=800)
    p.add_argument("--placements", nargs="+", default=["in-process", "cluster"], choices=["in-process", "cluster"])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    rows = []
    for placement in a.placements:
        for learning in (False, True):
            for concurrency in a.concurrency:
                result = measure(a, placement, learning, concurrency)
                m = result.measurements[0]
                rows.append({"placement": placement, "learning": learning, "concurrency": concurrency,
                             **asdict(m), "learner": result.learner})
                print(f"{placement:10s} learning {'on ' if learning else 'off'} concurrency {concurrency}: "
                      f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, {m.throughput_rps:.1f} req/s, hit rate "
                      f"{m.hit_rate:.3f}, agreement with the base model {m.base_agreement:.4f}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"command": " ".join(["python", "experiments/learning_cost.py", *sys.argv[1:]]),
                                 "environment": environment(), "rows": rows}, indent=1) + "\n")


def measure(a: argparse.Namespace, placement: str, learning: bool, concurrency: int) -> BenchResult:
    """One measurement, on a learner or cluster of its own (what one measurement learned never serves another)."""
    bench = dict(bundle=Path(a.bundle), data_dir=Path(a.data_dir), limit=a.requests, requests=a.requests,
                 concurrency=(concurrency,), warmup=20)
    if placement == "in-process":
        online = OnlineConfig(sample_rate=a.sample_rate, refit_every=a.refit_every, select_samples=a.select_samples,
                              certify_samples=a.certify_samples) if learning else None
        return run_bench(BenchConfig(**bench, online=online))
    refits = Refits(a.sample_rate, a.refit_every, a.select_samples, a.certify_samples) if learning else None
    with local_cluster(Path(a.bundle), "cpu", 0.0, refits) as cluster:
        result = run_bench(BenchConfig(**bench, endpoint=cluster.endpoint))
        if learning:
            result.learner = cluster.learning_counters()
        return result


if __name__ == "__main__":
    main()
