"""`gati bench`: a load generator that measures the in-process engine or a cluster the same way.

C client threads send real images (one request at a time each) until every image of the split
subset was sent once. Latency is measured per request at the client, from raw uint8 pixels to
label (so preprocessing is inside both paths), and recorded in an HDR histogram. The bundle gives
the reference answers: `agreement` compares every answer with the in-process engine's answer for
the same image (1.0 means the cluster answers exactly what the engine does), `base_agreement`
with the full model's.

Without an endpoint the in-process engine is driven directly, with the same threads and clock.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hdrh.histogram import HdrHistogram

from gati.bundle import Bundle, load_bundle
from gati.data import load_split
from gati.errors import InvalidInput
from gati.runtime.engine import Engine

MAX_LATENCY_US = 60_000_000


@dataclass
class BenchConfig:
    bundle: Path
    data_dir: Path
    split: str = "test:eval"
    limit: int = 500
    concurrency: int = 1
    endpoint: str | None = None       # HOST:PORT of an aggregator; None: the in-process engine
    dataset: str | None = None        # default: the dataset the bundle was built for
    warmup: int = 20                  # requests sent (and not measured) before the run
    timeout_s: float = 30.0
    seed: int = 0


@dataclass
class BenchResult:
    target: str                       # "in-process" or the endpoint
    requests: int
    completed: int
    errors: int
    agreement: float                  # answers equal to the in-process engine's
    base_agreement: float             # answers equal to the full model's
    hit_rate: float                   # answers given by a cache
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    concurrency: int
    seconds: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class References:
    engine: np.ndarray   # the in-process engine's label per image
    base: np.ndarray     # the full model's label per image


# A sender answers (label, answered by a cache?) for one uint8 H x W x 3 image.
Sender = Callable[[np.ndarray], tuple[int, bool]]


def references(bundle: Bundle, engine: Engine, images: np.ndarray) -> References:
    x = bundle.preprocess(images)
    with torch.inference_mode():
        base = torch.cat([bundle.model(b).argmax(1) for b in x.split(256)]).numpy()
    ours = np.array([engine.predict(x[i:i + 1]).label for i in range(len(x))])
    return References(ours, base)


def engine_sender(bundle: Bundle, engine: Engine) -> Callable[[], Sender]:
    def make() -> Sender:
        def send(image: np.ndarray) -> tuple[int, bool]:
            a = engine.predict(bundle.preprocess(image[None]))
            return a.label, a.exit_cut is not None
        return send
    return make


def remote_sender(endpoint: str, timeout_s: float) -> Callable[[], Sender]:
    from gati.rpc.client import GatiClient, parse_endpoint
    host, port = parse_endpoint(endpoint)

    def make() -> Sender:
        client = GatiClient(host, port, timeout_s=timeout_s)  # one connection per client thread

        def send(image: np.ndarray) -> tuple[int, bool]:
            p = client.predict_pixels(image)
            return p.label, p.exit_cut >= 0
        return send
    return make


def drive(make_sender: Callable[[], Sender], images: np.ndarray, concurrency: int, warmup: int
          ) -> tuple[dict[int, tuple[int, bool]], HdrHistogram, Counter, float]:
    """Send every image once from `concurrency` threads; (answers by index, histogram, errors, seconds)."""
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1, got {concurrency}")
    senders = [make_sender() for _ in range(concurrency)]
    for i in range(min(warmup, len(images))):
        senders[i % concurrency](images[i])
    answers: dict[int, tuple[int, bool]] = {}
    errors: Counter = Counter()
    hists = [HdrHistogram(1, MAX_LATENCY_US, 3) for _ in senders]
    next_index = iter(range(len(images)))
    lock = threading.Lock()

    def client(k: int) -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                answer = senders[k](images[i])
            except Exception as e:  # typed errors are counted by kind, never stop the run
                with lock:
                    errors[type(e).__name__] += 1
                continue
            hists[k].record_value(max(1, int((time.perf_counter() - start) * 1e6)))
            answers[i] = answer

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    total = hists[0]
    for h in hists[1:]:
        total.add(h)
    return answers, total, errors, seconds


def run_bench(cfg: BenchConfig) -> BenchResult:
    bundle = load_bundle(cfg.bundle)
    engine = Engine(bundle)
    data = load_split(cfg.dataset or bundle.manifest.dataset, cfg.data_dir, cfg.split,
                      limit=cfg.limit, seed=cfg.seed)
    refs = references(bundle, engine, data.images)
    if cfg.endpoint:
        make, target = remote_sender(cfg.endpoint, cfg.timeout_s), cfg.endpoint
    else:
        make, target = engine_sender(bundle, engine), "in-process"
    answers, hist, errors, seconds = drive(make, data.images, cfg.concurrency, cfg.warmup)
    return summarize(target, len(data.images), answers, refs, hist, errors, seconds, cfg.concurrency)


def summarize(target: str, requests: int, answers: dict[int, tuple[int, bool]], refs: References,
              hist: HdrHistogram, errors: Counter, seconds: float, concurrency: int) -> BenchResult:
    idx = np.array(sorted(answers), dtype=np.int64)
    labels = np.array([answers[i][0] for i in idx], dtype=np.int64)
    n = len(idx)

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if n else 0.0

    def pct(p: float) -> float:
        return hist.get_value_at_percentile(p) / 1000 if n else 0.0

    return BenchResult(target=target, requests=requests, completed=n, errors=sum(errors.values()),
                       agreement=share(labels == refs.engine[idx]) if n else 0.0,
                       base_agreement=share(labels == refs.base[idx]) if n else 0.0,
                       hit_rate=share(np.array([answers[i][1] for i in idx])),
                       p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
                       mean_ms=hist.get_mean_value() / 1000 if n else 0.0,
                       throughput_rps=n / seconds if seconds > 0 else 0.0, concurrency=concurrency,
                       seconds=seconds, error_kinds=dict(errors))


def format_table(r: BenchResult) -> str:
    rows = [("target", r.target), ("concurrency", r.concurrency), ("completed", f"{r.completed}/{r.requests}"),
            ("errors", f"{r.errors} {r.error_kinds or ''}".strip()), ("agreement (engine)", f"{r.agreement:.4f}"),
            ("agreement (base)", f"{r.base_agreement:.4f}"), ("hit rate", f"{r.hit_rate:.3f}"),
            ("p50 / p90 / p99 ms", f"{r.p50_ms:.2f} / {r.p90_ms:.2f} / {r.p99_ms:.2f}"),
            ("mean ms", f"{r.mean_ms:.2f}"), ("throughput", f"{r.throughput_rps:.1f} req/s")]
    return "\n".join(f"{k:<20} {v}" for k, v in rows)
