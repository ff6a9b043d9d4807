"""What the online engine adds to a request beyond the cascade itself, in process, one JSON line per model.

The coin, the verdict source that keeps activations, counting the request in the live bound and handing it to
the learner (and, where the tier serves, its search): measured as the difference with the plain engine on the
same requests, the two interleaved, median and mean; the guarantee alone (`learn=False`), then with learning.
The learning itself runs between requests, outside the timed part (`background=False`, settled after each):
what it costs beside serving (shadow checks, refits, reviews) is experiments/learning_cost.py's measurement, and
what it gains per workload the latency sweep's `learning` preset.

    python experiments/learning_overhead.py --bundle r18=bundles/sweep/resnet18-cifar10-cpu \\
        --data-dir ../shared/data --sample-rate 0.4

With `--refit-every N` the learner also refits and reviews between requests (the `learning-iid` preset's
settings: `--refit-every 300 --select-samples 100 --certify-samples 800`), so versions it deploys serve the later
requests: over the whole evaluation half (`--requests 0`) this is learning against the frozen caches on i.i.d.
traffic, paired request by request, with a bootstrap interval on the relative difference.

Run it on a quiet machine: timings measured beside other work are not results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gati.bundle import load_bundle  # noqa: E402
from gati.data import load_split  # noqa: E402
from gati.learning.neighbours import TIER  # noqa: E402
from gati.learning.online import OnlineConfig, OnlineEngine  # noqa: E402
from gati.measure.environment import environment  # noqa: E402
from gati.measure.workloads import Iid  # noqa: E402
from gati.runtime.engine import Engine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", action="append", required=True, help="NAME=PATH, once per model")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--sample-rate", type=float, default=0.4, help="the learner's coin (the learning grid's 0.4)")
    p.add_argument("--refit-every", type=int, default=10**9, help="samples between refits (default: none)")
    p.add_argument("--select-samples", type=int, default=OnlineConfig.select_samples)
    p.add_argument("--certify-samples", type=int, default=OnlineConfig.certify_samples)
    p.add_argument("--modes", default="guard,learning", help="guard (the guarantee alone) and/or learning")
    a = p.parse_args()
    refits = {"refit_every": a.refit_every, "select_samples": a.select_samples, "certify_samples": a.certify_samples}
    for item in a.bundle:
        name, _, path = item.partition("=")
        result = overhead(path, a.data_dir, a.sample_rate, a.requests or None, refits, a.modes.split(","))
        print(json.dumps({"model": name, **result, "environment": environment()}), flush=True)


def overhead(path: str, data_dir: str, sample_rate: float, requests: int | None, refits: dict,
             modes: list[str]) -> dict:
    """Milliseconds the online engine adds per request to the plain engine's cascade, and that relative to the
    plain engine's mean (with a 95% bootstrap interval over requests).

    The tier's search, a lookup the latency model charges like a cache's, is reported beside it."""
    bundle = load_bundle(path)
    data = load_split(bundle.manifest.dataset, data_dir, "test:eval", limit=requests)
    inputs = [bundle.preprocess(data.images[i:i + 1]) for i in Iid(seed=0).generate(data).sources]
    plain = Engine(bundle, "sync", graphs=False)
    out: dict = {"threads": torch.get_num_threads(), "requests": len(inputs), "sample_rate": sample_rate, **refits}
    for name in modes:
        config = OnlineConfig(sample_rate=sample_rate, learn=name == "learning", background=False, **refits)
        with OnlineEngine(bundle, config) as online:
            pairs = np.array([_pair(plain, online, x, first_plain=i % 2 == 0) for i, x in enumerate(inputs)])
            if online.tier is not None:
                out["tier search ms"] = round(online.costs.lookup_ms[(online.tier.config.cut, TIER)], 4)
            status = online.status()
            out[f"{name} reviews, versions deployed"] = [status.reviews, status.versions_deployed]
        extra = pairs[:, 1] - pairs[:, 0]
        out[f"{name} added ms (median)"] = round(float(np.median(extra)) * 1e3, 4)
        out[f"{name} added ms (mean)"] = round(float(extra.mean()) * 1e3, 4)  # sampled requests' share too
        out[f"{name} plain engine ms (mean)"] = round(float(pairs[:, 0].mean()) * 1e3, 4)
        out[f"{name} relative to plain (mean)"] = round(float(pairs[:, 1].mean() / pairs[:, 0].mean() - 1), 5)
        out[f"{name} relative 95% interval"] = [round(v, 5) for v in _interval(pairs)]
    plain.close()
    return out


def _pair(plain: Engine, online: OnlineEngine, x: torch.Tensor, first_plain: bool) -> tuple[float, float]:
    """The plain engine's and the online engine's seconds on one input, alternating which runs first."""
    times = {}
    for which in (("plain", "online") if first_plain else ("online", "plain")):
        start = time.perf_counter()
        plain.predict(x) if which == "plain" else online.predict(x)
        times[which] = time.perf_counter() - start
    online.settle()
    return times["plain"], times["online"]


def _interval(pairs: np.ndarray, draws: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of mean(online) / mean(plain) - 1, resampling requests (pairs stay together)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(pairs), size=(draws, len(pairs)))
    ratios = pairs[idx, 1].mean(axis=1) / pairs[idx, 0].mean(axis=1) - 1
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


if __name__ == "__main__":
    main()
