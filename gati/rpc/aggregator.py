"""The aggregator: the front door. `predict(Request) -> Prediction`.

It admits the request into a bounded queue (Overloaded when full, never growing, and before any
decoding: a refused request costs almost nothing), decodes and checks it once a worker takes it
(InvalidRequest), caps its deadline at `timeouts_ms.max_request`, and hands it to a backend:

- `ClusterBackend` (the distributed topology): sends the request to the least loaded executor
  replica and waits for the answer its cascade loop decides (`finished`), within the deadline. The
  loop is the in-process engine's, so the cluster answers exactly what the engine answers, unless
  a predictor is down or slow: then the full model answers from that cut on and the reply says it
  is degraded. A replica that dies with requests in flight is noticed at once
  (gati/rpc/replicas.py): they move to another replica, or fail with Unavailable, not at their
  deadline.
  The answers to the sampled requests keep the live guarantee at the front door (gati/rpc/live.py): an
  anytime-valid lower bound on the agreement of every answer given, exported as a metric, and a fallback to no
  early exits, asked of the retrainer, when that bound is about to fall below the target.
- `EngineBackend` (`--role all`, gati/rpc/engine_backend.py): the in-process engine behind the same Thrift front
  door, with the live guarantee of `gati.learning.online` when the aggregator has a sample rate.

The cluster's aggregator does not import torch: it checks and converts inputs with numpy and PIL
(gati.preprocess) and forwards them, so it starts in a fraction of the time and memory of a service that holds the
model.

A sampled share of requests is finished by the full model in the background; comparing it with
the answer given estimates live agreement (a metric), and the (features, base label) samples go
to the retrainer.
"""
from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from gati.errors import InvalidInput
from gati.learning.guarantee import ALPHA, HEADROOM
from gati.rpc.admission import Admission, deadline_s
from gati.rpc.config import AggregatorConfig, Timeouts
from gati.rpc.gen.gati_idl.ttypes import (
    DeadlineExceeded,
    ExecutionResult,
    InvalidRequest,
    Overloaded,
    Prediction,
    Request,
    RunRequest,
    ShadowResult,
    Unavailable,
)
from gati.rpc.inputs import InputSpec
from gati.rpc.live import LiveGuard
from gati.rpc.metrics import AggregatorMetrics
from gati.rpc.replicas import Replica, Replicas
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import to_tensor
from gati.rpc.timing import Stopwatch
from gati.rpc.transport import Limits, PeerUnavailable, Pool

log = logging.getLogger("gati.rpc.aggregator")
SAMPLED_TTL_S = 120.0  # a sampled request whose shadow result never comes is forgotten after this


@dataclass
class Outcome:
    label: int
    confidence: float
    exit_cut: int        # -1: the full model answered
    exit_name: str
    stages_run: int
    request_id: int = 0
    # What the backend measured (milliseconds; None: nobody did), for the reply's breakdown
    queue_ms: float | None = None
    compute_ms: float | None = None
    lookup_ms: float | None = None
    missing: tuple[str, ...] = ()   # planned cuts whose verdict never came: the full model answered from there


class Backend(Protocol):
    def run(self, x: np.ndarray, deadline: float, sampled: bool) -> Outcome: ...  # x: 1 x C x H x W float32
    def finished(self, result: ExecutionResult) -> None: ...   # the executor's answer
    def shadowed(self, result: ShadowResult) -> None: ...      # a sampled request, run to the end
    def close(self) -> None: ...


# ---- the distributed backend ----------------------------------------------------------------

@dataclass
class Pending:
    """One request in the cluster: the executor's answer, and for a sampled one its shadow result."""
    request_id: int
    sampled: bool
    cut_names: dict[int, str]
    replica: str = ""          # the executor replica it was sent to last
    created: float = field(default_factory=time.monotonic)
    outcome: Outcome | None = None
    error: str = ""
    lost: str = ""             # why the replica it was sent to can no longer answer it
    shadow: ShadowResult | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def send_to(self, replica: str) -> None:
        """A new attempt, on `replica`: forget how an earlier one failed."""
        self.replica, self.lost, self.error = replica, "", ""
        if self.outcome is None:
            self.done.clear()

    def answer(self, result: ExecutionResult) -> None:
        if self.done.is_set() and not self.lost:
            return
        if result.error:
            self.error = result.error
        elif result.cancelled:
            self.error = "the executor stopped the request before it was answered"
        else:
            name = self.cut_names.get(result.exit_cut, "final")
            if result.by_tier:  # the online tier answered at that cut (gati/rpc/tier.py), as the engine names it
                name = f"tier:{name}"
            missing = tuple(self.cut_names.get(c, str(c)) for c in result.missing_cuts or ())
            self.outcome = Outcome(result.label, result.confidence, result.exit_cut, name, result.stages_run,
                                   self.request_id, result.queue_ms, result.compute_ms, result.lookup_ms, missing)
        self.lost = ""
        self.done.set()

    def lose(self, why: str) -> None:
        """Its replica died: wake the request's thread, which moves it or fails it."""
        if not self.done.is_set():
            self.lost = why
            self.done.set()


class ClusterBackend:
    """Sends each request to an executor replica (the least loaded) and waits for its answer. A
    replica that refuses the request, or dies with it in flight, hands it to the next replica
    while the deadline allows (gati/rpc/replicas.py says how a death is noticed)."""

    def __init__(self, cut_names: dict[int, str], replicas: list[Replica], limits: Limits,
                 metrics: AggregatorMetrics, retrainer: Pool | None = None, heartbeat_s: float = 1.0,
                 sample_rate: float = 0.0, target: float | None = None):
        self.cut_names = cut_names
        self.retrainer, self.metrics = retrainer, metrics
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self.guard: LiveGuard | None = None  # the live bound: needs sampled requests and a target to keep
        if sample_rate > 0 and target is not None:
            self.guard = LiveGuard(sample_rate, target, ALPHA, HEADROOM, self._ask_fallback)
            metrics.watch_bound(self.guard.snapshot)
        for r in replicas:
            metrics.replica_in_flight.labels(r.name).set_function(lambda r=r: r.in_flight)
        self.replicas = Replicas(replicas, limits, self._lost, self._replica_state, heartbeat_s).start()

    def run(self, x: np.ndarray, deadline: float, sampled: bool) -> Outcome:
        p = Pending(self._next_id(), sampled, self.cut_names)
        message = RunRequest(p.request_id, to_tensor(x), sampled,
                             time.time() + (deadline - time.monotonic()))
        self._pending[p.request_id] = p
        answered = False
        try:
            outcome = self._attempts(p, message, deadline)
            answered = True
            return outcome
        finally:
            if answered and sampled:
                self._learn(p)  # its shadow result may have come first
            else:
                self._pending.pop(p.request_id, None)
                if answered and self.guard is not None:
                    self.guard.observe(p.outcome.exit_cut >= 0, False)

    def _attempts(self, p: Pending, message: RunRequest, deadline: float) -> Outcome:
        tried: set[str] = set()
        refusals: list[Exception] = []
        while (replica := self.replicas.pick(tried)) is not None:
            if p.replica:  # handed on from the replica tried last
                self.metrics.moved.labels(p.replica).inc()
            tried.add(replica.name)
            p.send_to(replica.name)
            with self.replicas.busy(replica):
                try:
                    outcome = self._attempt(p, replica, message, deadline)
                except (PeerUnavailable, Unavailable, Overloaded) as e:
                    if isinstance(e, PeerUnavailable):
                        self.replicas.suspect(replica)
                    refusals.append(e)
                    outcome = None
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                break
        raise _failure(refusals, deadline)

    def _attempt(self, p: Pending, replica: Replica, message: RunRequest, deadline: float) -> Outcome | None:
        """The answer of one replica; None when it died with the request in flight."""
        remaining = deadline - time.monotonic()
        try:
            replica.pool.call("run", message, timeout_s=max(0.001, remaining))
        except PeerUnavailable as e:
            raise PeerUnavailable(f"executor {replica.name} is unreachable: {e}") from e
        remaining = deadline - time.monotonic()
        if not p.done.wait(timeout=max(0.0, remaining)):
            self._cancel(replica, p.request_id)
            raise DeadlineExceeded(f"no answer within {remaining * 1000:.0f} ms (request {p.request_id})")
        if p.lost:
            raise Unavailable(f"executor {replica.name} died with the request in flight ({p.lost})")
        if p.error:
            raise Unavailable(p.error)
        assert p.outcome is not None
        return p.outcome

    def finished(self, result: ExecutionResult) -> None:
        p = self._pending.get(result.request_id)
        if p is not None:
            p.answer(result)

    def shadowed(self, result: ShadowResult) -> None:
        p = self._pending.get(result.request_id)
        if p is not None and p.sampled:
            p.shadow = result
            self._learn(p)
        self._forget_stale()

    def _lost(self, replica: str) -> None:
        """A replica died: every request waiting on it moves on now, not at its deadline."""
        for p in list(self._pending.values()):
            if p.replica == replica:
                p.lose(f"{replica} is gone")

    def _replica_state(self, replica: str, up: bool) -> None:
        self.metrics.replica_up.labels(replica).set(1 if up else 0)

    def _learn(self, p: Pending) -> None:
        """A sampled request has both its answer and its full-model answer: score it, pass samples on."""
        with self._lock:  # the answer and the shadow result race; exactly one caller learns
            if p.outcome is None or p.shadow is None or self._pending.pop(p.request_id, None) is None:
                return
        hit, agree = p.outcome.exit_cut >= 0, p.outcome.label == p.shadow.base_label
        self.metrics.sample(hit, agree)
        if self.guard is not None:
            self.guard.observe(hit, True, (not agree) if hit else None)
        if self.retrainer is not None and p.shadow.samples:
            try:
                self.retrainer.send("add_samples", p.shadow.samples, p.shadow.tier)
            except PeerUnavailable as e:
                self.retrainer.warn(log, e)
                self.metrics.peer_unreachable.labels("retrainer").inc()

    def _forget_stale(self) -> None:
        old = time.monotonic() - SAMPLED_TTL_S
        for rid, p in list(self._pending.items()):
            if p.created < old and self._pending.pop(rid, None) is not None:
                if p.outcome is not None and p.sampled and self.guard is not None:
                    self.guard.lost(p.outcome.exit_cut >= 0)  # answered; its full-model run never came back

    def _ask_fallback(self, reason: str) -> None:
        self.metrics.live_fallbacks.inc()
        if self.retrainer is None:
            log.error("the live bound asks for no early exits (%s), but no retrainer is configured to deploy "
                      "them", reason)
            return
        try:
            self.retrainer.send("fallback", reason)
        except PeerUnavailable as e:  # the next wrong answer seen while the bound is at risk asks again
            self.retrainer.warn(log, e)
            self.metrics.peer_unreachable.labels("retrainer").inc()

    def _cancel(self, replica: Replica, request_id: int) -> None:
        try:
            replica.pool.send("cancel", request_id)
        except PeerUnavailable:
            pass

    def _next_id(self) -> int:
        # Unguessable: an id seen in one reply tells nothing about any other request's id.
        return secrets.randbits(63)

    def close(self) -> None:
        self.replicas.close()
        if self.retrainer is not None:
            self.retrainer.close()


def _failure(refusals: list[Exception], deadline: float) -> Exception:
    """What the client hears when no replica answered: Overloaded if every replica was full,
    DeadlineExceeded if time ran out, else Unavailable naming each replica's failure."""
    if refusals and all(isinstance(e, Overloaded) for e in refusals):
        return Overloaded("; ".join(e.message for e in refusals))
    why = "; ".join(getattr(e, "message", None) or str(e) for e in refusals) or "no executor is configured"
    if time.monotonic() >= deadline:
        return DeadlineExceeded(f"the deadline passed before an executor answered ({why})")
    return Unavailable(why)


# ---- the Thrift handler ---------------------------------------------------------------------

class AggregatorHandler(ServiceBase):
    role = "aggregator"

    def __init__(self, backend: Backend, spec: InputSpec, classes: list[str], cfg: AggregatorConfig,
                 metrics: AggregatorMetrics, timeouts: Timeouts):
        super().__init__(metrics)
        self.backend, self.spec, self.classes, self.cfg = backend, spec, classes, cfg
        self.metrics, self.timeouts = metrics, timeouts
        self.admission = Admission(cfg.queue_size, cfg.workers, metrics.queue_depth.set)
        metrics.in_flight.set_function(lambda: self.admission.running)  # read at scrape time
        self._rng = random.SystemRandom()  # the server's coin: secret, and independent of every request

    def predict(self, request: Request) -> Prediction:
        clock = Stopwatch()
        try:
            with self.gate.enter(lambda: Unavailable("the aggregator is draining; send to another replica")):
                outcome = self._admit_and_run(request, clock)
        except (InvalidRequest, Overloaded, Unavailable, DeadlineExceeded) as e:
            self.metrics.failed(type(e).__name__)
            raise
        seconds = clock.stop()
        self.metrics.answered(seconds, outcome.exit_name)
        if outcome.missing:
            self.metrics.degraded.labels(outcome.missing[0]).inc()
        return Prediction(label=outcome.label, class_name=self._class_name(outcome.label),
                          confidence=outcome.confidence, exit_cut=outcome.exit_cut, exit_name=outcome.exit_name,
                          stages_run=outcome.stages_run, server_ms=seconds * 1000, request_id=outcome.request_id,
                          degraded=bool(outcome.missing), missing_cuts=list(outcome.missing),
                          **clock.breakdown(outcome.queue_ms, outcome.compute_ms, outcome.lookup_ms))

    def _admit_and_run(self, request: Request, clock: Stopwatch) -> Outcome:
        # Admitted first, decoded once a worker takes it: a request refused as Overloaded costs no
        # decoding, and at most `workers` decoded images are held at once.
        t = self.timeouts
        deadline = time.monotonic() + deadline_s(request.deadline_ms, t.request_ms, t.max_request_ms)
        with self.admission.slot(deadline):
            clock.admitted()
            try:
                x = self.spec.decode(request)
            except InvalidInput as e:
                raise InvalidRequest(str(e)) from e
            clock.decoded()
            return self.backend.run(x, deadline, self._rng.random() < self.cfg.sample_rate)

    def finished(self, result: ExecutionResult) -> None:
        self.backend.finished(result)

    def shadowed(self, result: ShadowResult) -> None:
        self.backend.shadowed(result)

    def _class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)
