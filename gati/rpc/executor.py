"""The executor: holds the base model and runs each request through the cascade loop.

The loop is `gati.runtime.cascade.run_cascade`, the same one the in-process engine runs; here its
verdict source is `RemoteVerdicts`: after each planned cut the cache's reduced input (e.g. the
pooled vector, not the activation) goes to the cut's predictor, whose reply is the verdict. A
predictor that is down, failing or slower than `lookup_s` gives no verdict: the cut is missing,
the full model answers from there, and the answer says so (see gati/runtime/cascade.py for why).
`lookahead` bounds how far the stages run ahead of the verdicts (0 for sync plans, 1 for async ones).

With an online neighbour tier (gati/rpc/tier.py) the tier's cut asks the index service's tier first, beside the
cut's cache (if any): the tier's hit is the answer, else the cache's verdict, else a miss; a tier verdict that
never comes is missing like any other. A request that ran to the end is remembered by the tier with the full
model's answer, and a sampled one's shadow result carries the tier's verdict on it, for the retrainer's reviews.

This handler keeps only what is specific to serving: a bounded queue of requests (a request that
is not the model's input, or that finds the queue full, is refused before it is queued) and worker threads,
cancellation (by the aggregator, or at the request's deadline) and the wire messages. The moment
the loop decides an answer it goes to the aggregator (`finished`); a sampled request then runs to
the end and its full-model answer and reduced features follow (`shadowed`), for live agreement and
the retrainer.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from gati.bundle import Bundle
from gati.cache import Cache
from gati.cache.base import confidence_and_label
from gati.cache.reduce import make_reducer
from gati.errors import Cancelled, InvalidInput
from gati.learning.tier_config import TierConfig
from gati.learning.tier_vector import unit_vector
from gati.rpc.gen.gati_idl import Aggregator, Predictor
from gati.rpc.gen.gati_idl.ttypes import (
    ExecutionResult,
    Features,
    InvalidRequest,
    Overloaded,
    RunRequest,
    Sample,
    ShadowResult,
    TierVerdict,
    Unavailable,
)
from gati.rpc.metrics import ExecutorMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import from_tensor, to_tensor
from gati.rpc.transport import Call, Limits, PeerUnavailable, Pool
from gati.runtime.cascade import Answer, Done, Step, Trace, Verdict, run_cascade

log = logging.getLogger("gati.rpc.executor")
REMEMBERED_CANCELS = 4096


@dataclass
class Route:
    """Where the reduced activation of one planned cut goes."""
    cut: int
    cache: Cache       # only its reducer runs here
    pool: Pool         # the predictor serving the cut


@dataclass
class TierRoute:
    """The online tier: the cut it reads, how its vector is made, and the index service that keeps it."""
    config: TierConfig
    pool: Pool

    def __post_init__(self) -> None:
        self.reduce = make_reducer(self.config.reducer).forward

    @property
    def cut(self) -> int:
        return self.config.cut


@dataclass
class RunState:
    """One request's cancellation flag and deadline."""
    request_id: int
    sampled: bool
    deadline: float
    cancelled: bool = False   # by the aggregator: stop regardless

    def should_stop(self) -> bool:
        return self.cancelled or time.time() > self.deadline


@dataclass
class _Reply:
    """A lookup sent to a predictor; its reply is read (once) when the loop needs the verdict."""
    source: "RemoteVerdicts"
    cut: int
    call: Call
    until: float   # time.monotonic() by which the verdict must arrive
    read: bool = False

    def verdict(self) -> Verdict | None:
        self.read = True
        try:
            reply = self.call.result(self.until - time.monotonic())
        except PeerUnavailable as e:  # slow or crashed: no verdict
            late = time.monotonic() >= self.until
            self.source.failures.labels("timeout" if late else "unreachable").inc()
            self.call.pool.warn(log, e)
            return None
        if reply.error:  # the predictor answered that its cache could not judge: no verdict either
            self.source.failures.labels("error").inc()
            return None
        return Verdict(reply.cut, reply.label, reply.confidence, reply.hit)


@dataclass
class _TierFirst:
    """The tier's cut: the tier's verdict first; on a tier miss, the cut's cache's (if any), else a miss."""
    source: "RemoteVerdicts"
    tier: _Reply | Done
    cache: _Reply | Done | None

    def verdict(self) -> Verdict | None:
        v = self.tier.verdict()
        if v is None:  # missing: from here the full model answers (gati/runtime/cascade.py)
            return None
        self.source.tier_verdict = TierVerdict(v.label, v.confidence)
        if v.hit:
            self.source.by_tier = True
            return v
        if self.cache is None:
            return Verdict(v.cut, v.label, v.confidence, False)
        return self.cache.verdict()


@dataclass
class RemoteVerdicts:
    """The cascade's verdict source in the cluster, one per request: lookups on remote predictors (and the tier)."""
    request_id: int
    routes: dict[int, Route]
    lookup_s: float
    failures: object                             # a Prometheus counter labelled by reason
    keep_features: bool = False                  # sampled requests keep what they sent, for the retrainer
    tier: TierRoute | None = None
    samples: list[Sample] = field(default_factory=list)
    sent: list[_Reply] = field(default_factory=list)
    tier_vector: np.ndarray | None = None        # this request's unit vector at the tier's cut
    tier_verdict: TierVerdict | None = None      # the tier's verdict, once read
    by_tier: bool = False                        # the tier answered

    def ask(self, cut: int, act: torch.Tensor) -> _Reply | _TierFirst | Done:
        cache = self._lookup(cut, act) if cut in self.routes else None
        if self.tier is None or cut != self.tier.cut:
            assert cache is not None, f"cut {cut} has neither a cache nor the tier"
            return cache
        self.tier_vector = unit_vector(self.tier.reduce, act)
        vector = to_tensor(self.tier_vector[None])
        return _TierFirst(self, self._start(self.tier.pool, cut, Features(self.request_id, cut, vector), "judge"),
                          cache)

    def _lookup(self, cut: int, act: torch.Tensor) -> _Reply | Done:
        route = self.routes[cut]
        feats = to_tensor(route.cache.reduce(act).cpu().numpy())
        if self.keep_features:
            self.samples.append(Sample(cut=cut, features=feats, base_label=-1))
        return self._start(route.pool, cut, Features(request_id=self.request_id, cut=cut, features=feats), "lookup")

    def _start(self, pool: Pool, cut: int, features: Features, method: str) -> _Reply | Done:
        until = time.monotonic() + self.lookup_s
        try:
            call = pool.start(method, features)
        except PeerUnavailable as e:  # no verdict at its cut; the request goes on without caches
            pool.warn(log, e)
            self.failures.labels("unreachable").inc()
            return Done(None)
        self.sent.append(_Reply(self, cut, call, until))
        return self.sent[-1]

    def drain(self) -> None:
        """Read the replies the loop left unread (it stopped at a hit): a connection is reusable
        only once its reply is read."""
        for reply in self.sent:
            if not reply.read:
                reply.verdict()


class ExecutorHandler(ServiceBase):
    role = "executor"

    def __init__(self, bundle: Bundle, routes: dict[int, Route], aggregator: Pool,
                 lookup_s: float, workers: int = 1, lookahead: int = 1, metrics: ExecutorMetrics | None = None,
                 queue_size: int = 64, tier: TierRoute | None = None):
        self.metrics: ExecutorMetrics = metrics or ExecutorMetrics()
        super().__init__(self.metrics)
        cuts = bundle.staged.cuts
        asked = set(routes) | ({tier.cut} if tier is not None else set())
        self.steps = [Step(stage, i + 1, i if i in asked else None, cuts[i] if i in asked else "")
                      for i, stage in enumerate(bundle.staged.stages)]
        self.tier = tier
        self.device = next(bundle.model.parameters()).device
        self.input_shape = (1, *bundle.info.manifest.input_shape)
        self.routes, self.aggregator, self.lookup_s = routes, aggregator, lookup_s
        self.lookahead = lookahead
        self.draining = False
        self._states: dict[int, RunState] = {}
        self._early_cancels: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[RunRequest, torch.Tensor, float] | None] = queue.Queue(queue_size)
        self.metrics.queue_depth.set_function(self._jobs.qsize)  # read at scrape time
        self.metrics.in_flight.set_function(lambda: len(self._states))
        self._workers = [threading.Thread(target=self._work, name=f"executor-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._workers:
            t.start()

    # ---- Thrift interface -----------------------------------------------------------------

    def run(self, request: RunRequest) -> None:
        if self.draining:
            raise Unavailable("the executor is draining")
        x = self._input(request)
        try:
            self._jobs.put_nowait((request, x, time.perf_counter()))
        except queue.Full:
            raise Overloaded(f"the executor's queue is full ({self._jobs.maxsize} requests waiting); "
                             f"send to another replica or retry later") from None

    def _input(self, request: RunRequest) -> torch.Tensor:
        """The request's input, checked before it is queued: float32, the model's shape, finite."""
        try:
            x = from_tensor(request.input, "run input")
        except InvalidInput as e:
            raise InvalidRequest(str(e)) from e
        if x.dtype != np.float32 or x.shape != self.input_shape:
            raise InvalidRequest(f"run input must be float32 {self.input_shape}, got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise InvalidRequest("run input contains NaN or infinite values")
        return torch.from_numpy(x.copy())

    def cancel(self, request_id: int) -> None:
        with self._lock:  # with _execute's registration: a cancel is never lost between the two
            state = self._states.get(request_id)
            if state is not None:
                state.cancelled = True
                return
            self._early_cancels[request_id] = None  # it may still be queued
            while len(self._early_cancels) > REMEMBERED_CANCELS:
                self._early_cancels.popitem(last=False)

    # ---- lifecycle ------------------------------------------------------------------------

    def drain(self, timeout_s: float) -> None:
        """Refuse new runs, finish the queued and running ones, stop the workers."""
        self.draining = True
        for _ in self._workers:  # after the jobs already queued
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    # ---- one request ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._execute(*job)

    def _execute(self, request: RunRequest, x: torch.Tensor, received: float) -> None:
        queue_ms = (time.perf_counter() - received) * 1000
        state = RunState(request.request_id, request.sampled, request.deadline_unix)
        with self._lock:
            self._states[request.request_id] = state
            if request.request_id in self._early_cancels:
                del self._early_cancels[request.request_id]
                state.cancelled = True
        source = RemoteVerdicts(request.request_id, self.routes, self.lookup_s, self.metrics.lookup_failures,
                                keep_features=request.sampled, tier=self.tier)
        answered = False

        def on_answer(answer: Answer) -> None:
            nonlocal answered
            answered = True
            self._send("finished", _result(request.request_id, answer, queue_ms, source.by_tier))

        try:
            with torch.inference_mode():
                trace = run_cascade(x.to(self.device), self.steps, source, self.lookahead, _head,
                                    shadow=request.sampled, stop=state.should_stop, on_answer=on_answer)
            self._count(trace, request.sampled)
            if request.sampled:
                self._send("shadowed", _shadow(request.request_id, trace, source))
            if trace.completed:
                self._remember(source, trace.final.label)
        except Cancelled:
            self.metrics.requests.labels("stopped").inc()
            if not answered:
                self._send("finished", ExecutionResult(request_id=request.request_id, cancelled=True, error=""))
        except Exception as e:  # a model failure: the aggregator gets a typed error
            log.exception("request %d failed", request.request_id)
            self.metrics.requests.labels("failed").inc()
            if not answered:
                self._send("finished", ExecutionResult(request_id=request.request_id,
                                                       error=f"executor failed: {e}"))
        finally:
            source.drain()
            self._states.pop(request.request_id, None)

    def _count(self, trace: Trace, sampled: bool) -> None:
        a = trace.answer
        self.metrics.requests.labels("completed" if trace.completed else "stopped").inc()
        self.metrics.stages.inc(trace.final.stages_run if trace.completed else a.stages_run)
        if a.exit_cut is not None and not sampled:  # by construction at most `lookahead`
            self.metrics.stages_after_hit.observe(a.stages_run - (a.exit_cut + 1))

    def _send(self, method: str, message: object) -> None:
        try:
            self.aggregator.send(method, message)
        except PeerUnavailable as e:
            self.aggregator.warn(log, e)
            self.metrics.peer_unreachable.labels("aggregator").inc()

    def _remember(self, source: RemoteVerdicts, label: int) -> None:
        """A request that ran to the end teaches the tier its full-model answer (after the tier judged it)."""
        if self.tier is None or source.tier_vector is None:
            return
        try:
            self.tier.pool.send("remember", to_tensor(source.tier_vector[None]),
                                to_tensor(np.array([label], np.int64)))
        except PeerUnavailable as e:
            self.tier.pool.warn(log, e)
            self.metrics.peer_unreachable.labels("index").inc()


def _head(logits: torch.Tensor) -> tuple[int, float]:
    label, conf = confidence_and_label(logits.float())
    return int(label.item()), float(conf.item())


def _result(request_id: int, answer: Answer, queue_ms: float, by_tier: bool = False) -> ExecutionResult:
    return ExecutionResult(request_id=request_id, label=answer.label, confidence=answer.confidence,
                           exit_cut=-1 if answer.exit_cut is None else answer.exit_cut,
                           stages_run=answer.stages_run, error="", cancelled=False, queue_ms=queue_ms,
                           compute_ms=answer.compute_s * 1000, lookup_ms=answer.wait_s * 1000,
                           missing_cuts=list(answer.missing), by_tier=by_tier and answer.exit_cut is not None)


def _shadow(request_id: int, trace: Trace, source: RemoteVerdicts) -> ShadowResult:
    """The full model's answer and logits attached to every cut's features (the retrainer's teacher), and the
    tier's verdict on the request (label -1 when it gave none)."""
    logits = to_tensor(trace.output[0].float().cpu().numpy().astype(np.float32))
    for s in source.samples:
        s.base_label, s.base_logits = trace.final.label, logits
    tier = None
    if source.tier is not None:
        tier = source.tier_verdict or TierVerdict(-1, 0.0)
    return ShadowResult(request_id=request_id, base_label=trace.final.label, samples=source.samples, tier=tier)


def make_routes(bundle: Bundle, placement: dict[str, tuple[str, int]], limits: Limits) -> dict[int, Route]:
    """cut index -> Route, from {cut name: (predictor host, port)}."""
    pools: dict[tuple[str, int], Pool] = {}
    routes = {}
    last = len(bundle.staged.stages) - 1
    for entry in bundle.plan.entries:
        if entry.cut >= last:
            continue  # no lookup after the head
        host, port = placement[entry.cut_name]
        pool = pools.setdefault((host, port), Pool(Predictor.Client, host, port, limits, name=f"predictor@{host}:{port}"))
        routes[entry.cut] = Route(entry.cut, bundle.caches[entry.cut], pool)
    return routes


def aggregator_pool(host: str, port: int, limits: Limits) -> Pool:
    return Pool(Aggregator.Client, host, port, limits, name="aggregator")
