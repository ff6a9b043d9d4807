"""The aggregator: the front door. `predict(Request) -> Prediction`.

It decodes and checks the request (InvalidRequest), admits it into a bounded queue (Overloaded
when full, never growing), and hands it to a backend:

- `ClusterBackend` (the distributed topology): sends the request to the executor and collects the
  predictors' reports. The answer is the first confident hit *in cut order* (a later cut's hit
  waits until the earlier cuts' reports are in, or until the executor, which relays every hit it
  saw, has stopped: then an unreported cut is a miss), or the full model's answer. So the cluster answers exactly what the
  in-process engine answers, unless a predictor is down or slow: then its cut is a miss.
- `EngineBackend` (`--role all`): the in-process engine behind the same Thrift front door.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gati.errors import InvalidInput
from gati.rpc.admission import Admission
from gati.rpc.config import AggregatorConfig
from gati.rpc.gen.gati_idl.ttypes import (
    DeadlineExceeded,
    ExecutionResult,
    InvalidRequest,
    Overloaded,
    Prediction,
    Report,
    Request,
    RunRequest,
    ServiceStatus,
    Unavailable,
)
from gati.rpc.inputs import InputSpec
from gati.rpc.metrics import ServingMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import PeerUnavailable, Pool
from gati.runtime.engine import Engine

log = logging.getLogger("gati.rpc.aggregator")
SAMPLED_TTL_S = 120.0  # a sampled request whose executor result never comes is forgotten after this


@dataclass
class Outcome:
    label: int
    confidence: float
    exit_cut: int        # -1: the full model answered
    exit_name: str
    stages_run: int
    request_id: int = 0


class Backend(Protocol):
    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome: ...
    def report(self, report: Report) -> None: ...             # a predictor's verdict
    def finished(self, result: ExecutionResult) -> None: ...  # the executor's result
    def close(self) -> None: ...


# ---- the distributed backend ----------------------------------------------------------------

@dataclass
class Pending:
    """One request in the cluster: reports so far, the executor's result, the decision."""
    request_id: int
    sampled: bool
    cuts: list[int]                  # the plan's cuts, in order
    cut_names: dict[int, str]
    n_stages: int
    created: float = field(default_factory=time.monotonic)
    reports: dict[int, Report] = field(default_factory=dict)
    result: ExecutionResult | None = None
    outcome: Outcome | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_report(self, report: Report) -> None:
        with self.lock:
            self.reports.setdefault(report.cut, report)
            self._decide()

    def add_result(self, result: ExecutionResult) -> None:
        with self.lock:
            for r in result.reports or []:
                self.reports.setdefault(r.cut, r)
            self.result = result
            self._decide()

    def _decide(self) -> None:
        if self.done.is_set():
            return
        for cut in self.cuts:
            r = self.reports.get(cut)
            if r is None:
                if self.result is None:
                    return  # an earlier cut may still hit: wait for its report
                continue    # the executor has stopped: an unreported cut is a miss
            if r.hit:
                self.outcome = Outcome(r.label, r.confidence, cut, self.cut_names[cut], cut + 1, self.request_id)
                self.done.set()
                return
        if self.result is None:
            return
        res = self.result
        if res.error:
            self.error = res.error
        elif res.completed:
            self.outcome = Outcome(res.label, res.confidence, -1, "final", self.n_stages, self.request_id)
        else:
            self.error = "the executor stopped the request before it was answered"
        self.done.set()


class ClusterBackend:
    def __init__(self, cuts: list[int], cut_names: dict[int, str], n_stages: int, executor: Pool,
                 metrics: ServingMetrics, retrainer: Pool | None = None):
        self.cuts, self.cut_names, self.n_stages = cuts, cut_names, n_stages
        self.executor, self.retrainer, self.metrics = executor, retrainer, metrics
        self._pending: dict[int, Pending] = {}

    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome:
        p = Pending(self._next_id(), sampled, self.cuts, self.cut_names, self.n_stages)
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
        if not sampled or p.result is not None:
            self._pending.pop(p.request_id, None)
        if p.error:
            raise Unavailable(p.error)
        assert p.outcome is not None
        return p.outcome

    def report(self, report: Report) -> None:
        p = self._pending.get(report.request_id)
        if p is not None:
            p.add_report(report)

    def finished(self, result: ExecutionResult) -> None:
        if result.cancelled and not result.error:
            self.metrics.cancellations.inc()
        p = self._pending.get(result.request_id)
        if p is None:
            return
        p.add_result(result)
        if p.sampled:
            self._learn(p, result)

    def _learn(self, p: Pending, result: ExecutionResult) -> None:
        """A sampled request came back finished: score the answer given, pass samples on."""
        if p.done.is_set() and p.outcome is not None and result.completed:
            self._pending.pop(p.request_id, None)
            hit = p.outcome.exit_cut >= 0
            self.metrics.sample(hit, p.outcome.label == result.label)
            if self.retrainer is not None and result.samples:
                try:
                    self.retrainer.send("add_samples", result.samples)
                except PeerUnavailable as e:
                    self.retrainer.warn(log, e)
                    self.metrics.errors.labels("retrainer_unreachable").inc()
        self._forget_stale()

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
    def __init__(self, engine: Engine, metrics: ServingMetrics):
        self.engine, self.metrics = engine, metrics
        self._background = ThreadPoolExecutor(1, thread_name_prefix="gati-sample")
        self._ids = itertools.count(1)

    def run(self, x: torch.Tensor, deadline: float, sampled: bool) -> Outcome:
        a = self.engine.predict(x)
        exit_cut = -1 if a.exit_cut is None else a.exit_cut
        if sampled:
            self._background.submit(self._score, x, exit_cut >= 0, a.label)
        return Outcome(a.label, a.confidence, exit_cut, a.exit_name, a.stages_run, next(self._ids))

    def _score(self, x: torch.Tensor, hit: bool, label: int) -> None:
        self.metrics.sample(hit, not hit or self.engine.predict_base(x) == label)

    def report(self, report: Report) -> None:
        pass  # in-process: no predictors report

    def finished(self, result: ExecutionResult) -> None:
        pass  # in-process: no executor

    def close(self) -> None:
        self._background.shutdown(wait=True)


# ---- the Thrift handler ---------------------------------------------------------------------

class AggregatorHandler(ServiceBase):
    role = "aggregator"

    def __init__(self, backend: Backend, spec: InputSpec, classes: list[str], cfg: AggregatorConfig,
                 metrics: ServingMetrics, request_timeout_s: float, bundle_sha256: str = ""):
        super().__init__("aggregator", bundle_sha256)
        self.backend, self.spec, self.classes, self.cfg = backend, spec, classes, cfg
        self.metrics, self.request_timeout_s = metrics, request_timeout_s
        self.admission = Admission(cfg.queue_size, cfg.workers, metrics.queue_depth.set)
        metrics.in_flight.set_function(lambda: self.admission.running)  # read at scrape time
        self._rng = random.Random(os.getpid())

    def predict(self, request: Request) -> Prediction:
        start = time.perf_counter()
        try:
            with self.gate.enter(lambda: Unavailable("the aggregator is draining; send to another replica")):
                outcome = self._admit_and_run(request)
        except (InvalidRequest, Overloaded, Unavailable, DeadlineExceeded) as e:
            self.metrics.failed(type(e).__name__)
            raise
        seconds = time.perf_counter() - start
        self.metrics.answered(seconds, outcome.exit_name)
        return Prediction(label=outcome.label, class_name=self._class_name(outcome.label),
                          confidence=outcome.confidence, exit_cut=outcome.exit_cut, exit_name=outcome.exit_name,
                          stages_run=outcome.stages_run, server_ms=seconds * 1000, request_id=outcome.request_id)

    def _admit_and_run(self, request: Request) -> Outcome:
        timeout_s = request.deadline_ms / 1000 if request.deadline_ms and request.deadline_ms > 0 \
            else self.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            x = self.spec.decode(request)
        except InvalidInput as e:
            raise InvalidRequest(str(e)) from e
        with self.admission.slot(deadline):
            return self.backend.run(x, deadline, self._rng.random() < self.cfg.sample_rate)

    def report(self, report: Report) -> None:
        self.backend.report(report)

    def finished(self, result: ExecutionResult) -> None:
        self.backend.finished(result)

    def status(self) -> ServiceStatus:
        s = super().status()
        counters, gauges = self.metrics.snapshot()
        s.counters.update(counters)
        s.gauges.update(gauges)
        return s

    def _class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)
