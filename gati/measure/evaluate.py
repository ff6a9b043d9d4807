"""`gati eval`: replay a request stream one request at a time through the base model and the engine.

Side by side in one process: for every request the base model and the engine answer the same preprocessed tensor,
alternating which goes first so that neither always runs on a warmer cache. Each request is timed from its input
tensor to its label (`side_by_side`, the one timing rule; the latency sweep's cluster rows are timed with it too).
Agreement is the fraction of requests whose answer equals the base model's own answer on the same input; it is
only meaningful on images that neither fitted nor calibrated the caches, so a split overlapping the bundle's
calibration images is refused.

The stream is a workload (`gati.measure.workloads`): by default `iid`, the split in the order
`np.random.default_rng(seed).permutation(len(data))` (what `gati eval` always replayed). Other workloads have
locality (`zipf`, `bursty`, `repeat`), drift (`drift`) or come from a file (`trace`, whose true labels are
unknown: its accuracies are None). The result names the workload and its one-line locality summary. A caller that
replays one stream several times (the latency sweep, at several targets) passes it as `stream`, generated once.

Frozen (the default): nothing is updated during the run. Online (`online=OnlineConfig(...)`): the engine is
`gati.learning.online.OnlineEngine`, which samples requests with its own coin, keeps the live lower bound, falls
back to more conservative levels, and (unless `learn=False`) learns from its traffic; with `background=False` its
learning runs between requests, outside the timed part, and the run is deterministic.

Every request's record (`RequestRecord`) is in the result (`EvalResult.records`, left out of `to_dict`) and, with
`records`, written to that file: one JSON object per line and request, in stream order, with

    i          the request's index in the stream
    source     the source image's index in the split (a trace: in the file's list of images)
    phase      the drift phase (0 for other workloads)
    truth      the true label (-1: unknown, a trace)
    base       the base model's answer
    answer     the engine's answer
    exit       the exit's name: a cut's, "tier:<cut>" (online: the neighbour tier), or "final"
    stages     stages run before the answer was decided
    ms_base    the base model's time, milliseconds
    ms_gati    the engine's time, milliseconds
    hit        answered early
    sampled    the server's coin chose it (online; false when frozen)
    lower      the live lower bound on agreement after it was counted (online; null when frozen)
    level      the level it was served at (0: no early exits; frozen: the plan's own level)
    version    the cache version that served it (0: the bundle's)
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from gati.bundle import Bundle
from gati.data import Dataset
from gati.errors import GatiError
from gati.learning.guarantee import FALLBACK, RECERTIFIED, RECOVERED, Transition
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.measure.environment import records_header
from gati.measure.latency_model import check_model
from gati.measure.workloads import UNKNOWN_LABEL, Iid, Stream, Trace, Workload, parse_workload
from gati.runtime.engine import Engine

WARMUP = 20
WINDOW = 1000  # requests in the sliding window whose worst agreement is reported
# the unsplit model's replayed time off the profile's by more than this: the latency model is stale for the machine
STALE_PROFILE = 0.05
MS_DECIMALS = 4  # milliseconds in the records file: to 0.1 microsecond


@dataclass(frozen=True)
class RequestRecord:
    """One request of the replay: the fields of a `records` line (see the module's docstring)."""

    i: int
    source: int
    phase: int
    truth: int
    base: int
    answer: int
    exit: str
    stages: int
    ms_base: float
    ms_gati: float
    hit: bool
    sampled: bool
    lower: float | None
    level: int
    version: int

    def to_json(self) -> dict:
        ms = {"ms_base": round(self.ms_base, MS_DECIMALS), "ms_gati": round(self.ms_gati, MS_DECIMALS)}
        return {**asdict(self), **ms}


@dataclass
class EvalResult:
    requests: int
    base_acc: float | None  # None: true labels unknown (a trace)
    gati_acc: float | None
    agreement: float
    hit_rate: float
    hits_per_layer: dict[str, int]
    mean_ms_base: float
    mean_ms_gati: float
    p50_ms_base: float
    p50_ms_gati: float
    p99_ms_base: float
    p99_ms_gati: float
    speedup_mean: float
    speedup_p50: float
    mean_stages_run: float
    target: float
    certified: str                 # the bundle's claim, e.g. "agreement with the base model >= 0.97"
    confidence: float              # at which the claim was proven
    nominal_lower_bound: float     # Clopper-Pearson on the certify part (an estimate, not the claim)
    mode: str
    device: str
    threads: int
    split: str
    seed: int
    bundle: str
    workload: str = "iid"          # the workload's canonical spec
    locality: str = ""             # its one-line locality summary, from the base model's answers
    online: bool = False
    worst_window_agreement: float = 1.0  # the lowest agreement over WINDOW consecutive requests (the run if shorter)
    sample_rate: float | None = None     # online: the coin's p
    live_lower_bound: float | None = None    # online: the final anytime-valid lower bound on agreement
    live_point_estimate: float | None = None
    bound_above_realised: int | None = None  # online: requests after which the bound exceeded the realised agreement
    fallbacks: int = 0
    recoveries: list[int] = field(default_factory=list)  # requests from each fallback to its recovery
    returns: list[int] = field(default_factory=list)  # requests from a fallback to the next faster level
    detection: list[int | None] = field(default_factory=list)  # per phase: requests from its start to a fallback
    transitions: list[dict] = field(default_factory=list)
    versions_deployed: int = 0
    reviews: int = 0
    deployed_by: dict[str, int] = field(default_factory=dict)  # versions by what made them: retune, refit
    final_level: int | None = None
    final_version: int = 0
    # frozen, in the plan's mode: the speed-up the bundle's latency model expects at this replay's own exits, and
    # the unsplit model's time in the bundle's profile (None otherwise)
    modelled_speedup: float | None = None
    profiled_ms_base: float | None = None
    records: list[RequestRecord] = field(default_factory=list, repr=False)  # every request, in stream order

    def to_dict(self) -> dict:
        """The summary (`gati eval --json`): the per-request records are left out (`--records` writes them)."""
        summary = asdict(replace(self, records=[]))
        del summary["records"]
        return summary


@dataclass
class _Served:
    """One request's outcome on the engine under test."""

    label: int
    exit_name: str
    stages: int
    hit: bool
    sampled: bool
    level: int
    version: int


def check_disjoint(bundle: Bundle, data: Dataset) -> None:
    _, calib_ids = bundle.info.calibration()
    overlap = set(calib_ids) & set(data.ids)
    if overlap:
        raise GatiError(f"split {data.split!r} shares {len(overlap)} images with the bundle's calibration "
                        f"set (e.g. {sorted(overlap)[0]}): results on it would overstate agreement; "
                        "evaluate on test:eval")


def evaluate(bundle: Bundle, data: Dataset, seed: int = 0, mode: str | None = None, progress: bool = True,
             workload: Workload | None = None, online: OnlineConfig | None = None,
             state_dir: str | Path | None = None, records: str | Path | None = None,
             stream: Stream | None = None) -> EvalResult:
    """Replay `workload` (default: `iid` with `seed`) over `data`; `online`: through the learning engine.
    `stream`: that workload's stream over `data`, already generated (its spec names the workload)."""
    workload, stream = _workload_stream(bundle, data, seed, workload, stream)
    engine = Engine(bundle, mode)
    learner = OnlineEngine(bundle, online, state_dir) if online is not None else None
    device = str(next(bundle.model.parameters()).device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    inputs = [bundle.preprocess(stream.images[t:t + 1]).to(device) for t in range(len(stream))]
    for x in inputs[:WARMUP]:
        engine.predict_base(x), engine.predict(x)
    serve = _online(learner) if learner is not None else _frozen(engine)
    base_ms, gati_ms, base_lbl, served, lower, kept = [], [], [], [], [], []
    out = open(records, "w", encoding="utf-8") if records else None
    if out is not None:
        out.write(records_header())
    requests = tqdm(inputs, desc="eval", unit="req", disable=not progress)
    try:
        for n, pair in enumerate(side_by_side(requests, engine.predict_base, serve, sync)):
            base_ms.append(pair.ms_base)
            base_lbl.append(pair.base)
            gati_ms.append(pair.ms_gati)
            served.append(pair.gati)
            if learner is not None:
                if not learner.config.background:
                    learner.settle()  # learning between requests, never inside the timed part
                lower.append(learner.lower_bound())
            kept.append(_record(stream, n, base_lbl[-1], served[-1], base_ms[-1], gati_ms[-1],
                                lower[-1] if lower else None))
            if out is not None:
                out.write(json.dumps(kept[-1].to_json()) + "\n")
    finally:
        if out is not None:
            out.close()
        engine.close()
        if learner is not None:
            learner.close()
    mode = "sync" if learner is not None else engine.mode  # the online engine looks up inline
    result = _summarise(bundle, data, stream, workload, seed, mode, device, base_ms, gati_ms, np.array(base_lbl),
                        served, np.array(lower) if learner is not None else None, learner)
    result.records = kept
    return result


@dataclass(frozen=True)
class Pair:
    """One request answered by both, and how long each took (milliseconds)."""

    base: Any
    ms_base: float
    gati: Any
    ms_gati: float


def side_by_side(inputs: Iterable[Any], base: Callable[[Any], Any], gati: Callable[[Any], Any],
                 sync: Callable[[], None] = lambda: None) -> Iterator[Pair]:
    """Both on every input, base first on even requests and GATI first on odd ones so that neither always runs on
    a warmer cache; each timed from its input to its answer, after `sync`. A generator: whatever the caller does
    between requests (learning, records) is outside the timed part."""
    for n, x in enumerate(inputs):
        answers, ms = {}, {}
        for name, fn in (("base", base), ("gati", gati)) if n % 2 == 0 else (("gati", gati), ("base", base)):
            sync()
            start = time.perf_counter()
            answers[name] = fn(x)
            ms[name] = (time.perf_counter() - start) * 1e3
        yield Pair(answers["base"], ms["base"], answers["gati"], ms["gati"])


def _workload_stream(bundle: Bundle, data: Dataset, seed: int, workload: Workload | None,
                     stream: Stream | None) -> tuple[Workload, Stream]:
    """The workload and its stream; a split workload's stream only over images the bundle never calibrated on."""
    if stream is not None:
        if workload is not None and workload.spec() != stream.workload:
            raise GatiError(f"the stream was made by {stream.workload}, not by {workload.spec()}")
        workload = parse_workload(stream.workload)
    workload = workload or Iid(seed=seed)
    if not isinstance(workload, Trace):
        check_disjoint(bundle, data)
    if stream is None:
        stream = workload.generate(data, bundle.input_shape) if isinstance(workload, Trace) else workload.generate(data)
    return workload, stream


def _frozen(engine: Engine):
    def serve(x: torch.Tensor) -> _Served:
        a = engine.predict(x)
        return _Served(a.label, a.exit_name, a.stages_run, a.exit_cut is not None, False, engine.level, 0)
    return serve


def _online(learner: OnlineEngine):
    def serve(x: torch.Tensor) -> _Served:
        a = learner.predict(x)
        return _Served(a.label, a.exit_name, a.answer.stages_run, a.hit, a.sampled, a.level, a.version)
    return serve


def _record(stream: Stream, i: int, base: int, s: _Served, ms_base: float, ms_gati: float,
            lower: float | None) -> RequestRecord:
    return RequestRecord(i, int(stream.sources[i]), int(stream.phases[i]), int(stream.labels[i]), int(base),
                         int(s.label), s.exit_name, int(s.stages), ms_base, ms_gati, bool(s.hit), bool(s.sampled),
                         lower, int(s.level), int(s.version))


def _summarise(bundle: Bundle, data: Dataset, stream: Stream, workload: Workload, seed: int, mode: str, device: str,
               base_ms: list[float], gati_ms: list[float], base_lbl: np.ndarray, served: list[_Served],
               lower: np.ndarray | None, learner: OnlineEngine | None) -> EvalResult:
    truth = stream.labels
    gati_lbl = np.array([s.label for s in served])
    agree = gati_lbl == base_lbl
    hits = {e.cut_name: 0 for e in bundle.plan.entries}
    for s in served:
        if s.exit_name != "final":
            hits[s.exit_name] = hits.get(s.exit_name, 0) + 1
    known = bool((truth != UNKNOWN_LABEL).all())
    mb, mg = statistics.fmean(base_ms), statistics.fmean(gati_ms)
    pb, pg = _pct(base_ms, 50), _pct(gati_ms, 50)
    result = EvalResult(
        requests=len(stream), base_acc=float((base_lbl == truth).mean()) if known else None,
        gati_acc=float((gati_lbl == truth).mean()) if known else None,
        agreement=float(agree.mean()), hit_rate=sum(s.hit for s in served) / len(served),
        hits_per_layer=hits, mean_ms_base=mb, mean_ms_gati=mg, p50_ms_base=pb, p50_ms_gati=pg,
        p99_ms_base=_pct(base_ms, 99), p99_ms_gati=_pct(gati_ms, 99), speedup_mean=mb / mg,
        speedup_p50=pb / pg, mean_stages_run=statistics.fmean(s.stages for s in served),
        target=float(bundle.manifest.target), certified=bundle.manifest.certified.claim,
        confidence=bundle.manifest.certified.confidence,
        nominal_lower_bound=bundle.manifest.certified.nominal_lower_bound, mode=mode, device=device,
        threads=torch.get_num_threads(), split=data.split, seed=seed, bundle=str(bundle.path),
        workload=workload.spec(), locality=stream.locality(base_lbl.astype(np.int64)).describe(),
        worst_window_agreement=worst_window(agree), final_level=served[-1].level, final_version=served[-1].version)
    if learner is None and mode == bundle.plan.mode:  # the model prices the plan's own mode and exits
        model = check_model(bundle.manifest, np.array([s.exit_name for s in served], dtype=object),
                            np.asarray(gati_ms), np.asarray(base_ms))
        result.modelled_speedup, result.profiled_ms_base = model.modelled_speedup, model.modelled_base_ms
    if learner is not None and lower is not None:
        _add_online(result, learner, agree, lower, stream.phases)
    return result


def _add_online(result: EvalResult, learner: OnlineEngine, agree: np.ndarray, lower: np.ndarray,
                phases: np.ndarray) -> None:
    status = learner.status()
    realised = np.cumsum(agree) / np.arange(1, len(agree) + 1)
    result.online, result.target = True, learner.target
    result.sample_rate = learner.config.sample_rate
    result.live_lower_bound, result.live_point_estimate = status.live.lower_bound, status.live.point_estimate
    result.bound_above_realised = int((lower > realised + 1e-12).sum())
    result.versions_deployed, result.deployed_by, result.reviews = status.versions_deployed, status.deployed_by, \
        status.reviews
    result.transitions = [asdict(t) for t in status.transitions]
    result.fallbacks = sum(t.kind == FALLBACK for t in status.transitions)
    result.recoveries = _spans(status.transitions, RECOVERED)
    result.returns = _spans(status.transitions, RECERTIFIED)
    starts = [0, *np.flatnonzero(np.diff(phases) != 0) + 1]
    ends = [*starts[1:], len(phases)]
    falls = [t.request for t in status.transitions if t.kind == FALLBACK]
    result.detection = [next((r - s for r in falls if s <= r < e), None) for s, e in zip(starts, ends)]


def _spans(transitions: list[Transition], kind: str) -> list[int]:
    """Requests from each fallback to the first later transition of `kind` (when one came)."""
    spans = []
    for i, t in enumerate(transitions):
        if t.kind == FALLBACK:
            later = next((u.request for u in transitions[i + 1:] if u.kind == kind), None)
            if later is not None:
                spans.append(later - t.request)
    return spans


def worst_window(agree: np.ndarray, window: int = WINDOW) -> float:
    """The lowest agreement over `window` consecutive requests (the whole run when shorter)."""
    if len(agree) <= window:
        return float(agree.mean())
    sums = np.convolve(agree.astype(np.float64), np.ones(window), mode="valid")
    return float(sums.min() / window)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def stale_profile(r: EvalResult) -> bool:
    """Did the unsplit model run more than STALE_PROFILE off the time the bundle's profile holds?"""
    return r.profiled_ms_base is not None and abs(r.mean_ms_base / r.profiled_ms_base - 1.0) > STALE_PROFILE


def format_table(r: EvalResult) -> str:
    accuracy = (f"{'accuracy':14}{r.base_acc:>10.4f}{r.gati_acc:>10.4f}" if r.base_acc is not None
                else "accuracy      (true labels unknown: a trace)")
    lines = [
        f"{r.requests} requests from {r.split} (seed {r.seed}), device {r.device}, {r.threads} threads, mode {r.mode}",
        f"workload {r.workload}; {r.locality}",
        f"{'':14}{'base':>10}{'gati':>10}{'speedup':>10}",
        f"{'mean ms':14}{r.mean_ms_base:>10.3f}{r.mean_ms_gati:>10.3f}{r.speedup_mean:>9.2f}x",
        f"{'p50 ms':14}{r.p50_ms_base:>10.3f}{r.p50_ms_gati:>10.3f}{r.speedup_p50:>9.2f}x",
        f"{'p99 ms':14}{r.p99_ms_base:>10.3f}{r.p99_ms_gati:>10.3f}",
        accuracy,
        f"agreement with base {r.agreement:.4f} (target {r.target}; certified: {r.certified}, with "
        f"{r.confidence:.2%} confidence), hit rate {r.hit_rate:.1%}, mean stages run {r.mean_stages_run:.2f}",
        f"worst {WINDOW}-request window: agreement {r.worst_window_agreement:.4f}",
        "hits per cut: " + ", ".join(f"{k}={v}" for k, v in r.hits_per_layer.items()),
    ]
    if r.modelled_speedup is not None and r.profiled_ms_base is not None:
        lines.append(f"latency model: {r.modelled_speedup:.2f}x expected at these exits (profile: unsplit model "
                     f"{r.profiled_ms_base:.3f} ms)")
        if stale_profile(r):
            lines.append(f"  the unsplit model ran {r.mean_ms_base / r.profiled_ms_base - 1:+.0%} off its profiled "
                         f"time: the machine is not as profiled; `gati plan --bundle {r.bundle} --device {r.device}` "
                         "profiles it again")
    if r.online:
        lines += [
            f"online: coin p={r.sample_rate}, live lower bound {r.live_lower_bound:.4f} (point estimate "
            f"{r.live_point_estimate:.4f}; above the realised agreement after {r.bound_above_realised} requests)",
            f"fallbacks {r.fallbacks}, recovered after {r.recoveries} requests, faster again after {r.returns}; "
            f"reviews {r.reviews}, versions deployed {r.versions_deployed} {r.deployed_by}; "
            f"final level {r.final_level}, version {r.final_version}",
        ]
    return "\n".join(lines)
