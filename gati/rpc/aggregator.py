"""The aggregator: the front door. `predict(Request) -> Prediction`.

It decodes and checks the request (InvalidRequest), admits it into a bounded queue (Overloaded
when full, never growing), and hands it to a backend:

- `ClusterBackend` (the distributed topology): sends the request to the executor and waits for the
  answer its cascade loop decides (`finished`), within the request's deadline. The loop is the
  in-process engine's, so the cluster answers exactly what the engine answers, unless a predictor
  is down or slow: then its cut is a miss.
- `EngineBackend` (`--role all`): the in-process engine behind the same Thrift front door, with the live
  guarantee of `gati.learning.online` when the aggregator has a sample rate.

A sampled share of requests is finished by the full model in the background; comparing it with
the answer given estimates live agreement (a metric), and the (features, base label) samples go
to the retrainer.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gati.errors import InvalidInput
from gati.learning.online import OnlineAnswer, OnlineEngine
from gati.rpc.admission import Admission
from gati.rpc.config import AggregatorConfig
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
from gati.rpc.metrics import AggregatorMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import to_tensor
from gati.rpc.timing import Stopwatch
from gati.rpc.transport import PeerUnavailable, Pool
from gati.runtime.engine import Engine

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


class Backend(Protocol):
    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome: ...
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
    created: float = field(default_factory=time.monotonic)
    outcome: Outcome | None = None
    error: str = ""
    shadow: ShadowResult | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def answer(self, result: ExecutionResult) -> None:
        if self.done.is_set():
            return
        if result.error:
            self.error = result.error
        elif result.cancelled:
            self.error = "the executor stopped the request before it was answered"
        else:
            name = self.cut_names.get(result.exit_cut, "final")
            self.outcome = Outcome(result.label, result.confidence, result.exit_cut, name, result.stages_run,
                                   self.request_id, result.queue_ms, result.compute_ms, result.lookup_ms)
        self.done.set()


class ClusterBackend:
    def __init__(self, cut_names: dict[int, str], executor: Pool, metrics: AggregatorMetrics,
                 retrainer: Pool | None = None):
        self.cut_names = cut_names
        self.executor, self.retrainer, self.metrics = executor, retrainer, metrics
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()

    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome:
        p = Pending(self._next_id(), sampled, self.cut_names)
        self._pending[p.request_id] = p
        remaining = deadline - time.monotonic()
        try:
            self.executor.call("run", RunRequest(p.request_id, to_tensor(x.numpy()), sampled, time.time() + remaining),
                               timeout_s=max(0.001, remaining))
        except (PeerUnavailable, Unavailable) as e:
            self._pending.pop(p.request_id, None)
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"the executor did not take the request within {remaining * 1000:.0f} ms") from e
            raise Unavailable(f"the executor is unreachable: {getattr(e, 'message', None) or e}") from e
        remaining = deadline - time.monotonic()
        if not p.done.wait(timeout=max(0.0, remaining)):
            self._pending.pop(p.request_id, None)
            self._cancel(p.request_id)
            raise DeadlineExceeded(f"no answer within {remaining * 1000:.0f} ms (request {p.request_id})")
        if not sampled or p.error:
            self._pending.pop(p.request_id, None)
        else:
            self._learn(p)  # its shadow result may have come first
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

    def _learn(self, p: Pending) -> None:
        """A sampled request has both its answer and its full-model answer: score it, pass samples on."""
        with self._lock:  # the answer and the shadow result race; exactly one caller learns
            if p.outcome is None or p.shadow is None or self._pending.pop(p.request_id, None) is None:
                return
        self.metrics.sample(p.outcome.exit_cut >= 0, p.outcome.label == p.shadow.base_label)
        if self.retrainer is not None and p.shadow.samples:
            try:
                self.retrainer.send("add_samples", p.shadow.samples)
            except PeerUnavailable as e:
                self.retrainer.warn(log, e)
                self.metrics.peer_unreachable.labels("retrainer").inc()

    def _forget_stale(self) -> None:
        old = time.monotonic() - SAMPLED_TTL_S
        for rid, p in list(self._pending.items()):
            if p.created < old:
                self._pending.pop(rid, None)

    def _cancel(self, request_id: int) -> None:
        try:
            self.executor.send("cancel", request_id)
        except PeerUnavailable:
            pass

    def _next_id(self) -> int:
        # Unguessable: an id seen in one reply tells nothing about any other request's id.
        return secrets.randbits(63)

    def close(self) -> None:
        self.executor.close()
        if self.retrainer is not None:
            self.retrainer.close()


# ---- the in-process backend (--role all) ----------------------------------------------------

class EngineBackend:
    """The in-process engine behind the front door. An `OnlineEngine` (learning off) keeps the live guarantee: it
    draws its own coin (the aggregator's `sampled` is not used), finishes sampled hits in the background, falls back
    to certified levels, and its live bound, point estimate and level are read at each scrape. A plain `Engine`
    (no sample rate) only answers."""

    def __init__(self, engine: Engine | OnlineEngine, metrics: AggregatorMetrics):
        self.engine, self.metrics = engine, metrics
        self._ids = itertools.count(1)
        if isinstance(engine, OnlineEngine):
            metrics.watch_live(engine.status)

    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome:
        served = self.engine.predict(x)
        a = served.answer if isinstance(served, OnlineAnswer) else served
        exit_cut = -1 if a.exit_cut is None else a.exit_cut
        return Outcome(a.label, a.confidence, exit_cut, a.exit_name, a.stages_run, next(self._ids),
                       compute_ms=a.compute_s * 1000, lookup_ms=a.wait_s * 1000)

    def finished(self, result: ExecutionResult) -> None:
        pass  # in-process: no executor

    def shadowed(self, result: ShadowResult) -> None:
        pass

    def close(self) -> None:
        self.engine.close()


# ---- the Thrift handler ---------------------------------------------------------------------

class AggregatorHandler(ServiceBase):
    role = "aggregator"

    def __init__(self, backend: Backend, spec: InputSpec, classes: list[str], cfg: AggregatorConfig,
                 metrics: AggregatorMetrics, request_timeout_s: float):
        super().__init__(metrics)
        self.backend, self.spec, self.classes, self.cfg = backend, spec, classes, cfg
        self.metrics, self.request_timeout_s = metrics, request_timeout_s
        self.admission = Admission(cfg.queue_size, cfg.workers, metrics.queue_depth.set)
        metrics.in_flight.set_function(lambda: self.admission.running)  # read at scrape time
        self._rng = random.Random(os.getpid())

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
        return Prediction(label=outcome.label, class_name=self._class_name(outcome.label),
                          confidence=outcome.confidence, exit_cut=outcome.exit_cut, exit_name=outcome.exit_name,
                          stages_run=outcome.stages_run, server_ms=seconds * 1000, request_id=outcome.request_id,
                          **clock.breakdown(outcome.queue_ms, outcome.compute_ms, outcome.lookup_ms))

    def _admit_and_run(self, request: Request, clock: Stopwatch) -> Outcome:
        timeout_s = request.deadline_ms / 1000 if request.deadline_ms and request.deadline_ms > 0 \
            else self.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            x = self.spec.decode(request)
        except InvalidInput as e:
            raise InvalidRequest(str(e)) from e
        clock.decoded()
        with self.admission.slot(deadline):
            clock.admitted()
            return self.backend.run(x, deadline, self._rng.random() < self.cfg.sample_rate)

    def finished(self, result: ExecutionResult) -> None:
        self.backend.finished(result)

    def shadowed(self, result: ShadowResult) -> None:
        self.backend.shadowed(result)

    def _class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)
