"""What the online engine adds to a request beyond the cascade itself, in process, one JSON line per model.

The coin, the verdict source that keeps activations, counting the request in the live bound and handing it to
the learner (and, where the tier serves, its search): measured as the difference with the plain engine on the
same requests, the two interleaved, median and mean; the guarantee alone (`learn=False`), then with learning.
The learning itself runs between requests, outside the timed part (`background=False`, settled after each):
what it costs beside serving (shadow checks, refits, reviews) is experiments/learning_cost.py's measurement, and
what it gains per workload the latency sweep's `learning` preset.

    python experiments/learning_overhead.py --bundle r18=bundles/sweep/resnet18-cifar10-cpu \\
        --data-dir ../shared/data --sample-rate 0.4

Run it on a quiet machine: timings measured beside other work are not results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gati.bundle import load_bundle  # noqa: E402
from gati.data import load_split  # noqa: E402
from gati.learning.neighbours import TIER  # noqa: E402
from gati.learning.online import OnlineConfig, OnlineEngine  # noqa: E402
from gati.measure.environment import environment  # noqa: E402
from gati.runtime.engine import Engine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", action="append", required=True, help="NAME=PATH, once per model")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--sample-rate", type=float, default=0.4, help="the learner's coin (the learning grid's 0.4)")
    a = p.parse_args()
    for item in a.bundle:
        name, _, path = item.partition("=")
        result = overhead(path, a.data_dir, a.sample_rate, a.requests)
        print(json.dumps({"model": name, **result, "environment": environment()}), flush=True)


def overhead(path: str, data_dir: str, sample_rate: float, requests: int) -> dict:
    """Milliseconds the online engine adds per request to the plain engine's cascade.

    The tier's search, a lookup the latency model charges like a cache's, is reported beside it."""
    bundle = load_bundle(path)
    data = load_split(bundle.manifest.dataset, data_dir, "test:eval", limit=requests)
    inputs = [bundle.preprocess(data.images[i:i + 1]) for i in range(len(data))]
    plain = Engine(bundle, "sync", graphs=False)
    out: dict = {"threads": torch.get_num_threads(), "requests": len(inputs), "sample_rate": sample_rate}
    for name, learn in (("guard", False), ("learning", True)):
        config = OnlineConfig(sample_rate=sample_rate, learn=learn, background=False, refit_every=10**9)
        with OnlineEngine(bundle, config) as online:
            extra = [_pair(plain, online, x, first_plain=i % 2 == 0) for i, x in enumerate(inputs)]
            if online.tier is not None:
                out["tier search ms"] = round(online.costs.lookup_ms[(online.tier.config.cut, TIER)], 4)
        out[f"{name} added ms (median)"] = round(statistics.median(extra) * 1e3, 4)
        out[f"{name} added ms (mean)"] = round(statistics.fmean(extra) * 1e3, 4)  # sampled requests' share too
    plain.close()
    return out


def _pair(plain: Engine, online: OnlineEngine, x: torch.Tensor, first_plain: bool) -> float:
    """The online engine's time minus the plain engine's on one input, alternating which runs first."""
    times = {}
    for which in (("plain", "online") if first_plain else ("online", "plain")):
        start = time.perf_counter()
        plain.predict(x) if which == "plain" else online.predict(x)
        times[which] = time.perf_counter() - start
    online.settle()
    return times["online"] - times["plain"]


if __name__ == "__main__":
    main()
