"""`gati bench`: load the in-process engine or a cluster, and measure both the same way.

Two kinds of load, in perf_analyzer's terms:

- concurrency (closed loop), `--concurrency 1,2,4,8`: C clients, each sending its next request
  when the previous answer is in. A list runs one measurement per level: a sweep.
- request rate (open loop), `--rate 50,100`: requests arrive as a Poisson process at R per
  second whatever the answers do, and are sent by a pool of up to `--max-threads` senders. Latency
  is counted from each request's *scheduled* arrival, so time spent waiting for a free sender
  (or behind a slow answer) is charged to the request, not hidden (no coordinated omission).

A measurement sends `--requests N` requests (default: every image of the subset once), or as many
as fit in `--duration S` seconds, after `--warmup` requests that are not counted. Images are sent
in the subset's order, cycling. Latency is measured at the client, from raw uint8 pixels to the
label (preprocessing is inside both paths), into an HDR histogram.

The bundle gives the reference answers: `agreement` compares every answer with the in-process
engine's for the same image (1.0: the cluster answers exactly what the engine does),
`base_agreement` with the full model's. A cluster's replies carry the server's timing (decode,
queue, compute, lookups, network; gati/rpc/timing.py), averaged per measurement; `records`
keeps every request (JSON lines) for plotting.

Without an endpoint the engine runs in this process, and nothing from Thrift is imported. With `online` it is
the learner (`gati.learning.online.OnlineEngine`: live bound, neighbour tier, refits and reviews on threads of
its own, beside the senders, as a server runs it), so a measurement with learning on and one with it off compare
what learning costs (and gains) under the same load; the learner's state at the end is in the result.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol, TextIO

import numpy as np
import torch
from hdrh.histogram import HdrHistogram

from gati.bundle import Bundle, load_bundle
from gati.data import load_split
from gati.errors import InvalidInput
from gati.learning.guarantee import FALLBACK
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.measure.environment import environment, records_header
from gati.rpc.timing import TIMING_FIELDS
from gati.runtime.engine import Engine

MAX_LATENCY_US = 60_000_000
PERCENTILES = (50, 90, 95, 99)


@dataclass
class BenchConfig:
    bundle: Path
    data_dir: Path
    split: str = "test:eval"
    limit: int = 500                      # images: a class-balanced subset of the split
    concurrency: tuple[int, ...] = (1,)   # closed loop, one measurement per level
    rate: tuple[float, ...] = ()          # open loop (requests/s), one measurement per rate; replaces concurrency
    requests: int | None = None           # per measurement; None: each image once (or --duration)
    duration_s: float | None = None       # per measurement, instead of a request count
    max_threads: int = 64                 # open loop: senders at most
    endpoint: str | None = None           # HOST:PORT of an aggregator; None: the in-process engine
    dataset: str | None = None            # default: the dataset the bundle was built for
    warmup: int = 20                      # requests sent (and not measured) before the first measurement
    timeout_s: float = 30.0
    seed: int = 0                         # the subset and the open loop's arrival times
    records: Path | None = None           # one JSON line per request
    online: OnlineConfig | None = None    # in process: the learner serves (None: the frozen engine)
    state_dir: Path | None = None         # online: its state directory

    def __post_init__(self) -> None:
        if any(c < 1 for c in self.concurrency) or not self.concurrency:
            raise InvalidInput(f"concurrency levels must be at least 1, got {list(self.concurrency)}")
        if any(r <= 0 for r in self.rate):
            raise InvalidInput(f"request rates must be positive, got {list(self.rate)}")
        if self.requests is not None and self.requests < 1:
            raise InvalidInput(f"requests must be at least 1, got {self.requests}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidInput(f"duration must be positive, got {self.duration_s}")
        if self.requests is not None and self.duration_s is not None:
            raise InvalidInput("give a request count or a duration, not both")
        if self.max_threads < 1:
            raise InvalidInput(f"max_threads must be at least 1, got {self.max_threads}")
        if self.online is not None and self.endpoint:
            raise InvalidInput("online learning is measured in process; a cluster learns as its config says "
                               "(the retrainer's refits, the online tier): drop --online or --endpoint")


@dataclass
class Reply:
    """What a sender learns from one answer."""
    label: int
    exit_name: str                        # a cut's name, or "final"
    server: dict[str, float] = field(default_factory=dict)  # the reply's timing fields (ms) that were set


class Sender(Protocol):
    def send(self, image: np.ndarray) -> Reply: ...   # one uint8 H x W x 3 image
    def close(self) -> None: ...


@dataclass
class Record:
    """One request, as `records` keeps it."""
    image: int                            # index in the subset
    sent: float                           # unix time of the (scheduled) send
    latency_ms: float | None              # None: it failed
    label: int | None = None
    exit: str | None = None
    error: str | None = None              # the error's type
    agree: bool | None = None             # equal to the in-process engine's answer
    client_wait_ms: float = 0.0           # open loop: waited for a free sender (inside latency_ms)
    server: dict[str, float] = field(default_factory=dict)


@dataclass
class Measurement:
    """One load level."""
    concurrency: int | None               # closed loop
    rate: float | None                    # open loop: the requested rate (requests/s)
    requests: int
    completed: int
    errors: int
    agreement: float                      # answers equal to the in-process engine's
    base_agreement: float                 # answers equal to the full model's
    hit_rate: float                       # answers given by a cache
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    seconds: float
    client_wait_p99_ms: float             # open loop: > 0 means the senders could not keep up
    server_ms: dict[str, float]           # mean of each timing field the replies carried
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class BenchResult:
    target: str                           # "in-process", "in-process, learning" or the endpoint
    bundle: str
    images: int
    measurements: list[Measurement]
    environment: dict
    learner: dict | None = None           # online: the learner's state at the end (gati.learning.online)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class References:
    engine: np.ndarray   # the in-process engine's label per image
    base: np.ndarray     # the full model's label per image


def references(bundle: Bundle, engine: Engine, images: np.ndarray) -> References:
    x = bundle.preprocess(images)
    with torch.inference_mode():
        base = torch.cat([bundle.model(b).argmax(1) for b in x.split(256)]).numpy()
    ours = np.array([engine.predict(x[i:i + 1]).label for i in range(len(x))])
    return References(ours, base)


class EngineSender:
    """The in-process engine (or learner): the same preprocessing and cascade a server runs, without a server."""

    def __init__(self, bundle: Bundle, engine: Engine | OnlineEngine):
        self.bundle, self.engine = bundle, engine

    def send(self, image: np.ndarray) -> Reply:
        a = self.engine.predict(self.bundle.preprocess(image[None]))
        return Reply(a.label, a.exit_name)  # a learner's answer names the tier when it answered

    def close(self) -> None:
        pass


class RemoteSender:
    """An aggregator over Thrift, one connection per sender (give each thread its own)."""

    def __init__(self, endpoint: str, timeout_s: float):
        from gati.optional import require
        require("thrift", "thrift", "gati bench --endpoint")
        from gati.rpc.client import GatiClient, parse_endpoint
        self.client = GatiClient(*parse_endpoint(endpoint), timeout_s=timeout_s)

    def send(self, image: np.ndarray) -> Reply:
        p = self.client.predict_pixels(image)
        return Reply(p.label, p.exit_name, {k: getattr(p, k) for k in TIMING_FIELDS if getattr(p, k) is not None})

    def close(self) -> None:
        self.client.close()


class Senders:
    """One sender per thread, made on first use and closed together."""

    def __init__(self, make: Callable[[], Sender]):
        self.make = make
        self._local = threading.local()
        self._all: list[Sender] = []
        self._lock = threading.Lock()

    def get(self) -> Sender:
        sender = getattr(self._local, "sender", None)
        if sender is None:
            sender = self._local.sender = self.make()
            with self._lock:
                self._all.append(sender)
        return sender

    def close(self) -> None:
        for s in self._all:
            s.close()


# ---- running the load -------------------------------------------------------------------------

class Run:
    """The requests of one measurement: which image each sends, and what came back."""

    def __init__(self, images: np.ndarray, refs: References, senders: Senders, count: int | None,
                 duration_s: float | None):
        self.images, self.refs, self.senders = images, refs, senders
        self.count = count if count is not None or duration_s is not None else len(images)
        self.duration_s = duration_s
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self.started = time.perf_counter()
        self.ended = self.started

    def more(self, k: int, at_s: float) -> bool:
        """May request number k, due `at_s` seconds after the start, go out?"""
        if self.count is not None:
            return k < self.count
        assert self.duration_s is not None
        return at_s < self.duration_s

    def send(self, k: int, scheduled: float) -> None:
        """Send request k, due at `scheduled` (perf_counter); latency counts from then."""
        i = k % len(self.images)
        sent = time.time() - (time.perf_counter() - scheduled)
        wait_ms = max(0.0, (time.perf_counter() - scheduled) * 1000)
        try:
            reply = self.senders.get().send(self.images[i])
        except Exception as e:  # typed errors are counted by kind, never stop the run
            record = Record(i, sent, None, error=type(e).__name__, client_wait_ms=wait_ms)
        else:
            latency = (time.perf_counter() - scheduled) * 1000
            record = Record(i, sent, latency, reply.label, reply.exit_name, agree=reply.label == int(self.refs.engine[i]),
                            client_wait_ms=wait_ms, server=reply.server)
        with self._lock:
            self.records.append(record)
            self.ended = max(self.ended, time.perf_counter())


def closed_loop(run: Run, concurrency: int) -> None:
    """`concurrency` clients, each sending its next request when its answer is in."""
    numbers = itertools.count()
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                k = next(numbers)
            if not run.more(k, time.perf_counter() - run.started):
                return
            run.send(k, time.perf_counter())

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def poisson_arrivals(rate: float, rng: np.random.Generator) -> Iterator[float]:
    """Seconds after the start at which requests arrive: a Poisson process of `rate` per second."""
    t = 0.0
    while True:
        t += rng.exponential(1.0 / rate)
        yield t


def open_loop(run: Run, rate: float, max_threads: int, rng: np.random.Generator) -> None:
    """Requests at Poisson arrival times, sent by up to `max_threads` threads; never throttled by answers."""
    with ThreadPoolExecutor(max_threads, thread_name_prefix="gati-bench") as pool:
        for k, offset in enumerate(poisson_arrivals(rate, rng)):
            if not run.more(k, offset):
                break
            due = run.started + offset
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run.send, k, due)


def run_bench(cfg: BenchConfig, progress: Callable[[Measurement], None] = lambda m: None) -> BenchResult:
    bundle = load_bundle(cfg.bundle)
    engine = Engine(bundle)
    data = load_split(cfg.dataset or bundle.manifest.dataset, cfg.data_dir, cfg.split,
                      limit=cfg.limit, seed=cfg.seed)
    if len(data.images) == 0:
        raise InvalidInput(f"{cfg.split} of {cfg.data_dir} holds no images")
    refs = references(bundle, engine, data.images)
    learner = None
    if cfg.endpoint:
        senders, target = Senders(partial(RemoteSender, cfg.endpoint, cfg.timeout_s)), cfg.endpoint
    elif cfg.online is not None:
        learner = OnlineEngine(bundle, cfg.online, state_dir=str(cfg.state_dir) if cfg.state_dir else None)
        senders, target = Senders(partial(EngineSender, bundle, learner)), "in-process, learning"
    else:
        senders, target = Senders(partial(EngineSender, bundle, engine)), "in-process"
    measurements = []
    try:
        warm = senders.get()
        for i in range(min(cfg.warmup, len(data.images))):
            try:
                warm.send(data.images[i])
            except Exception:  # an unreachable endpoint fails every measured request too: counted there
                break
        with open(cfg.records, "w") if cfg.records else nullcontext() as out:
            if out is not None:
                out.write(records_header())
            for level in _levels(cfg):
                run = Run(data.images, refs, senders, cfg.requests, cfg.duration_s)
                if level.rate is not None:
                    open_loop(run, level.rate, cfg.max_threads, np.random.default_rng(cfg.seed))
                else:
                    closed_loop(run, level.concurrency or 1)
                m = summarize(run, refs, level.concurrency, level.rate)
                measurements.append(m)
                _write_records(out, run.records, len(measurements) - 1, m)
                progress(m)
        status = None if learner is None else _learner_state(learner)
    finally:
        senders.close()
        engine.close()
        if learner is not None:
            learner.close()
    return BenchResult(target, str(cfg.bundle), len(data.images), measurements, environment(), status)


def _learner_state(learner: OnlineEngine) -> dict:
    """What the learner did during the run: versions, reviews, the live bound, the tier."""
    s = learner.status()
    return {"requests": s.requests, "version": s.version, "versions_deployed": s.versions_deployed,
            "deployed_by": s.deployed_by, "reviews": s.reviews, "level": s.level, "levels": s.levels,
            "live_lower_bound": s.live.lower_bound, "live_point_estimate": s.live.point_estimate,
            "fallbacks": sum(t.kind == FALLBACK for t in s.transitions), "samples": s.samples,
            "samples_dropped": s.samples_dropped, "tier_size": s.tier_size}


@dataclass(frozen=True)
class _Level:
    concurrency: int | None
    rate: float | None


def _levels(cfg: BenchConfig) -> list[_Level]:
    if cfg.rate:
        return [_Level(None, r) for r in cfg.rate]
    return [_Level(c, None) for c in cfg.concurrency]


def _write_records(out: TextIO | None, records: list[Record], index: int, m: Measurement) -> None:
    if out is None:
        return
    for r in sorted(records, key=lambda r: r.sent):
        row = {"measurement": index, "concurrency": m.concurrency, "rate": m.rate, **asdict(r)}
        row.update(row.pop("server"))
        out.write(json.dumps(row) + "\n")
    out.flush()


def summarize(run: Run, refs: References, concurrency: int | None, rate: float | None) -> Measurement:
    ok = [r for r in run.records if r.latency_ms is not None]
    hist, waits = HdrHistogram(1, MAX_LATENCY_US, 3), HdrHistogram(1, MAX_LATENCY_US, 3)
    for r in ok:
        hist.record_value(max(1, int(r.latency_ms * 1000)))
    for r in run.records:
        waits.record_value(max(1, int(r.client_wait_ms * 1000)))
    n = len(ok)
    seconds = run.ended - run.started

    def share(flags: list[bool]) -> float:
        return float(np.mean(flags)) if flags else 0.0

    def pct(p: float) -> float:
        return hist.get_value_at_percentile(p) / 1000 if n else 0.0

    errors = Counter(r.error for r in run.records if r.error is not None)
    server = {k: float(np.mean(v)) for k in TIMING_FIELDS if (v := [r.server[k] for r in ok if k in r.server])}
    p50, p90, p95, p99 = (pct(p) for p in PERCENTILES)
    return Measurement(
        concurrency=concurrency, rate=rate, requests=len(run.records), completed=n, errors=sum(errors.values()),
        agreement=share([bool(r.agree) for r in ok]),
        base_agreement=share([r.label == int(refs.base[r.image]) for r in ok]),
        hit_rate=share([r.exit != "final" for r in ok]),
        p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99,
        mean_ms=hist.get_mean_value() / 1000 if n else 0.0,
        throughput_rps=n / seconds if seconds > 0 else 0.0, seconds=seconds,
        client_wait_p99_ms=waits.get_value_at_percentile(99) / 1000 if rate is not None and run.records else 0.0,
        server_ms=server, error_kinds=dict(errors))


def format_table(r: BenchResult) -> str:
    """perf_analyzer's summary, one row per measurement."""
    open_loop_run = any(m.rate is not None for m in r.measurements)
    head = ["rate req/s" if open_loop_run else "concurrency", "throughput req/s", "p50 ms", "p90 ms", "p95 ms",
            "p99 ms", "mean ms", "hit rate", "agreement", "errors", "server ms: queue/compute/lookup/network"]
    rows = []
    for m in r.measurements:
        s = m.server_ms
        server = "/".join(f"{s[k]:.2f}" if k in s else "-" for k in ("queue_ms", "compute_ms", "lookup_ms",
                                                                     "network_ms"))
        rows.append([f"{m.rate:g}" if m.rate is not None else str(m.concurrency), f"{m.throughput_rps:.1f}",
                     f"{m.p50_ms:.2f}", f"{m.p90_ms:.2f}", f"{m.p95_ms:.2f}", f"{m.p99_ms:.2f}", f"{m.mean_ms:.2f}",
                     f"{m.hit_rate:.3f}", f"{m.agreement:.4f}",
                     f"{m.errors}" + (f" {m.error_kinds}" if m.error_kinds else ""), server])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = [f"target {r.target}, {r.images} images of {r.bundle}"]
    lines += ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *rows]]
    if r.learner is not None:
        k = r.learner
        lines.append(f"learner: version {k['version']} ({k['versions_deployed']} deployed, {k['reviews']} reviews), "
                     f"level {k['level']} of {k['levels'] - 1}, {k['fallbacks']} fallbacks, live lower bound "
                     f"{k['live_lower_bound']:.4f}, tier {k['tier_size']} vectors")
    saturated = [m for m in r.measurements if m.client_wait_p99_ms > 1.0]
    if saturated:
        lines.append(f"note: at {', '.join(f'{m.rate:g}' for m in saturated)} req/s requests waited for a free "
                     f"sender (p99 {max(m.client_wait_p99_ms for m in saturated):.1f} ms, counted in latency): "
                     f"raise --max-threads to load the server harder")
    return "\n".join(lines)
