"""Learning while serving, the grid of the issue: models x targets x workloads x online on/off, one JSON line per cell.

Each cell is `gati eval` in process (`gati.measure.evaluate.evaluate`) on test:eval, with the workload's stream;
online cells learn beside serving (background threads, the coin from the OS), frozen cells never change. Every
cell's result (the EvalResult fields, the cell's key and the environment) is appended to
`<out>/learning.jsonl` as soon as it is done, and its per-request records go to `<out>/records/<cell>.jsonl`, so an
interrupted grid resumes where it stopped (cells already in the file are skipped). Targets other than a bundle's
own are made once with `gati calibrate`'s code into `<out>/bundles/<model>-<target>` (another look at the bundle's
certify images, as that command spends). Online cells keep their state under `<out>/state/<cell>` and start from
an empty one.

    python experiments/learning.py --bundle r18=bundles/r18 --bundle r50=bundles/r50 --data-dir ../shared/data \\
        --out docs/results/learning --targets 0.97,0.99
    python experiments/learning.py ... --dry-run          # list the cells and exit
    python experiments/learning.py overhead --bundle r18=bundles/r18 --data-dir ../shared/data

`overhead`: what the online engine adds to a request beyond the cascade itself (the coin, the verdict source that
keeps activations, counting it in the live bound, handing it to the learner), as the median difference with the
plain engine on the same requests, interleaved: the guarantee alone, and with learning (the tier asked on sampled
requests). What learning costs beside serving (shadow checks, refits) shows in the grid's p99, online on vs off.
Run both on a quiet machine: timings measured beside other work are not results.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import torch

from gati.bundle import load_bundle, read_manifest
from gati.data import load_split
from gati.learning.neighbours import TIER
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.measure.environment import environment
from gati.measure.evaluate import evaluate
from gati.measure.workloads import parse_workload
from gati.pipeline.retarget import retarget
from gati.runtime.engine import Engine

WORKLOADS = ("iid", "zipf:s=1.0", "bursty:mean_run=20", "repeat", "drift")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=("grid", "overhead"), default="grid")
    p.add_argument("--bundle", action="append", required=True, help="NAME=PATH, once per model")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="docs/results/learning")
    p.add_argument("--targets", default="0.97,0.99", help="comma-separated agreement targets")
    p.add_argument("--workloads", default=";".join(WORKLOADS), help="';'-separated workload specs")
    p.add_argument("--requests", type=int, default=10000, help="requests per cell (each workload's n)")
    p.add_argument("--sample-rate", type=float, default=0.1)
    p.add_argument("--online", default="off,on", help="off, on or both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    bundles = dict(item.split("=", 1) for item in a.bundle)
    if a.what == "overhead":
        for name, path in bundles.items():
            result = overhead(path, a.data_dir, a.sample_rate)
            print(json.dumps({"model": name, **result, "environment": environment()}))
        return
    grid(a, bundles)


def grid(a: argparse.Namespace, bundles: dict[str, str]) -> None:
    out = Path(a.out)
    targets = [float(t) for t in a.targets.split(",")]
    workloads = [w.strip() for w in a.workloads.split(";") if w.strip()]
    modes = [m.strip() for m in a.online.split(",")]
    cells = [(model, target, workload, mode) for model in bundles for target in targets for workload in workloads
             for mode in modes]
    done = _done(out / "learning.jsonl")
    todo = [c for c in cells if _key(*c) not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", flush=True)
    if a.dry_run:
        for cell in todo:
            print("  " + _key(*cell))
        return
    (out / "records").mkdir(parents=True, exist_ok=True)
    for model, target, workload, mode in todo:
        key = _key(model, target, workload, mode)
        bundle = load_bundle(_bundle_for(bundles[model], model, target, out))
        data = load_split(bundle.manifest.dataset, a.data_dir, "test:eval")
        spec = parse_workload(_with_n(workload, a.requests, a.seed))
        state = out / "state" / key
        shutil.rmtree(state, ignore_errors=True)
        online = OnlineConfig(sample_rate=a.sample_rate) if mode == "on" else None
        started = time.time()
        result = evaluate(bundle, data, seed=a.seed, progress=False, workload=spec, online=online,
                          state_dir=state if online else None, records=out / "records" / f"{key}.jsonl")
        row = {"cell": key, "model": model, "target_requested": target, "online": mode == "on",
               **result.to_dict(), "seconds": round(time.time() - started, 1), "environment": environment()}
        with open(out / "learning.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{key}: agreement {result.agreement:.4f}, hit rate {result.hit_rate:.1%}, "
              f"speed-up {result.speedup_mean:.2f}x, worst window {result.worst_window_agreement:.4f}"
              + (f", live bound {result.live_lower_bound:.4f}" if result.online else ""), flush=True)


def _key(model: str, target: float, workload: str, mode: str) -> str:
    safe = workload.replace(":", "-").replace(",", "-").replace("=", "").replace("/", "_")
    return f"{model}-{target}-{safe}-{mode}"


def _with_n(workload: str, n: int, seed: int) -> str:
    """The spec with n and seed set, unless it sets them itself."""
    name, _, params = workload.partition(":")
    given = {p.split("=")[0] for p in params.split(",") if p}
    extra = [f"{k}={v}" for k, v in (("n", n), ("seed", seed)) if k not in given]
    return f"{name}:" + ",".join(filter(None, [params, *extra]))


def _done(results: Path) -> set[str]:
    if not results.is_file():
        return set()
    done = set()
    for line in results.read_text().splitlines():
        try:
            done.add(json.loads(line)["cell"])
        except (ValueError, KeyError):
            continue  # a line torn by an interruption: that cell runs again
    return done


def _bundle_for(path: str, model: str, target: float, out: Path) -> Path:
    """The bundle itself at its own target, else a re-targeted copy made once."""
    if math.isclose(read_manifest(path).target, target):
        return Path(path)
    copy = out / "bundles" / f"{model}-{target}"
    if not copy.exists():
        retarget(Path(path), target, copy)
    return copy


def overhead(path: str, data_dir: str, sample_rate: float, requests: int = 600) -> dict:
    """Median milliseconds the online engine adds per request to the plain engine's cascade (see the docstring).

    Its learning runs between requests, outside the timed part (`background=False`, settled after each): what is
    left is the request path's own share. The tier's search, a lookup the latency model charges like a cache's,
    is reported beside it."""
    bundle = load_bundle(path)
    data = load_split(bundle.manifest.dataset, data_dir, "test:eval", limit=requests)
    inputs = [bundle.preprocess(data.images[i:i + 1]) for i in range(len(data))]
    plain = Engine(bundle, "sync", graphs=False)
    out: dict = {"threads": torch.get_num_threads(), "requests": len(inputs)}
    for name, learn in (("guard", False), ("learning", True)):
        config = OnlineConfig(sample_rate=sample_rate, learn=learn, background=False, refit_every=10**9)
        with OnlineEngine(bundle, config) as online:
            extra = []
            for x in inputs:
                start = time.perf_counter()
                plain.predict(x)
                middle = time.perf_counter()
                online.predict(x)
                extra.append((time.perf_counter() - middle) - (middle - start))
                online.settle()
            if online.tier is not None:
                out["tier search ms"] = round(online.costs.lookup_ms[(online.tier.config.cut, TIER)], 4)
        out[f"{name} added ms (median)"] = round(statistics.median(extra) * 1e3, 4)
    plain.close()
    return out


if __name__ == "__main__":
    main()
