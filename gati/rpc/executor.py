"""The executor: holds the base model and runs each request stage by stage.

After each cut the plan caches, it sends that cache's reduced input (e.g. the pooled vector, not
the activation) to the cut's predictor and runs on without waiting for the reply, the verdict.
How far the stages run ahead of the verdicts is bounded by `lookahead`: before stage i the
executor reads the verdicts of cuts sent at stage i-1-lookahead or earlier (a predictor that is
down or slower than `lookup_s` counts as a miss), and a hit stops the request there, so after a
hit at most `lookahead` further stages run. lookahead 1 overlaps each lookup with the next stage
(the plan's async mode, right when the predictors have cores of their own); lookahead 0 leaves
the cores to the lookup (sync mode: on a small CPU host the speculative stage would compete with
the lookup it waits for).

When a request stops, the executor tells the aggregator (`finished`) what it ran, the full
model's answer if it got there, the verdicts it read, and, for sampled requests (finished in the
background whatever the caches said), the (reduced features, base label) samples the retrainer
learns from.
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
from gati.rpc.gen.gati_idl import Aggregator, Predictor
from gati.rpc.gen.gati_idl.ttypes import (
    ExecutionResult,
    Features,
    Report,
    RunRequest,
    Sample,
    Unavailable,
)
from gati.rpc.metrics import ExecutorMetrics
from gati.rpc.service import ServiceBase
from gati.rpc.tensors import from_tensor, to_tensor
from gati.rpc.transport import Call, Limits, PeerUnavailable, Pool

log = logging.getLogger("gati.rpc.executor")
REMEMBERED_CANCELS = 4096


@dataclass
class Route:
    """Where the reduced activation of one planned cut goes."""
    cut: int
    cache: Cache       # only its reducer runs here
    pool: Pool         # the predictor serving the cut


@dataclass
class RunState:
    """One request's cancellation flag and the verdicts read so far."""
    request_id: int
    sampled: bool
    deadline: float
    cancelled: bool = False                       # by the aggregator: stop regardless
    reports: dict[int, Report] = field(default_factory=dict)

    def first_hit(self) -> int | None:
        hits = [c for c, r in self.reports.items() if r.hit]
        return min(hits) if hits else None

    def should_stop(self) -> bool:
        if self.cancelled or time.time() > self.deadline:
            return True
        return not self.sampled and self.first_hit() is not None


@dataclass
class Lookup:
    """A cut's features sent to its predictor, verdict not read yet."""
    cut: int
    call: Call | None      # None: the predictor could not be reached (a miss)
    until: float           # time.monotonic() by which the verdict must arrive


class ExecutorHandler(ServiceBase):
    role = "executor"

    def __init__(self, bundle: Bundle, routes: dict[int, Route], aggregator: Pool,
                 lookup_s: float, workers: int = 1, lookahead: int = 1, metrics: ExecutorMetrics | None = None):
        self.metrics: ExecutorMetrics = metrics or ExecutorMetrics()
        super().__init__(self.metrics)
        self.stages = list(bundle.staged.stages)
        self.device = next(bundle.model.parameters()).device
        self.routes, self.aggregator, self.lookup_s = routes, aggregator, lookup_s
        self.lookahead = lookahead
        self.draining = False
        self._states: dict[int, RunState] = {}
        self._early_cancels: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: queue.Queue[RunRequest | None] = queue.Queue()
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
        self._jobs.put(request)

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

    # ---- the stage loop -------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            request = self._jobs.get()
            if request is None:
                return
            self._finish(self._execute(request))

    def _execute(self, request: RunRequest) -> ExecutionResult:
        state = RunState(request.request_id, request.sampled, request.deadline_unix)
        with self._lock:
            self._states[request.request_id] = state
            if request.request_id in self._early_cancels:
                del self._early_cancels[request.request_id]
                state.cancelled = True
        try:
            return self._stage_loop(state, from_tensor(request.input, "run input"))
        except Exception as e:  # a bad tensor or a model failure: the aggregator gets a typed error
            log.exception("request %d failed", request.request_id)
            self.metrics.requests.labels("failed").inc()
            return ExecutionResult(request_id=request.request_id, error=f"executor failed: {e}")
        finally:
            self._states.pop(request.request_id, None)

    def _stage_loop(self, state: RunState, array: np.ndarray) -> ExecutionResult:
        x = torch.from_numpy(array.copy()).to(self.device)
        pending: list[Lookup] = []               # in cut order
        samples: list[Sample] = []
        stages_run, last = 0, len(self.stages) - 1
        with torch.inference_mode():
            for i, stage in enumerate(self.stages):
                if state.should_stop():
                    break
                self._read_verdicts(state, pending, upto=i - 1 - self.lookahead)
                if state.should_stop():
                    break
                x = stage(x)
                stages_run = i + 1
                route = self.routes.get(i) if i < last else None
                if route is not None:
                    pending.append(self._send(state, route, x, samples))
        # Every verdict still out is read: the aggregator learns those before a hit from us, and a
        # connection is reusable only once its reply is read.
        self._read_verdicts(state, pending, upto=last)
        return self._result(state, x, stages_run, state.first_hit(), samples)

    def _send(self, state: RunState, route: Route, act: torch.Tensor, samples: list[Sample]) -> Lookup:
        feats = to_tensor(route.cache.reduce(act).cpu().numpy())
        if state.sampled:
            samples.append(Sample(cut=route.cut, features=feats, base_label=-1))
        until = time.monotonic() + self.lookup_s
        try:
            call = route.pool.start("lookup", Features(request_id=state.request_id, cut=route.cut, features=feats))
        except PeerUnavailable as e:  # its cut is a miss; the request goes on
            route.pool.warn(log, e)
            self.metrics.lookup_failures.labels("unreachable").inc()
            call = None
        return Lookup(route.cut, call, until)

    def _read_verdicts(self, state: RunState, pending: list[Lookup], upto: int) -> None:
        while pending and pending[0].cut <= upto:
            lookup = pending.pop(0)
            if lookup.call is None:
                continue
            try:
                report = lookup.call.result(lookup.until - time.monotonic())
            except PeerUnavailable as e:  # slow or crashed: a miss
                late = time.monotonic() >= lookup.until
                self.metrics.lookup_failures.labels("timeout" if late else "unreachable").inc()
                lookup.call.pool.warn(log, e)
                continue
            state.reports.setdefault(report.cut, report)

    def _result(self, state: RunState, x: torch.Tensor, stages_run: int, hit: int | None,
                samples: list[Sample]) -> ExecutionResult:
        completed = stages_run == len(self.stages)
        label, conf = -1, 0.0
        if completed:
            lab, c = confidence_and_label(x.float())
            label, conf = int(lab.item()), float(c.item())
            if samples:  # only a sampled request needs the logits on the host, encoded
                logits = to_tensor(x[0].float().cpu().numpy())
                for s in samples:
                    s.base_label, s.base_logits = label, logits
        after_hit = stages_run - (hit + 1) if hit is not None else -1
        self.metrics.requests.labels("completed" if completed else "stopped").inc()
        self.metrics.stages.inc(stages_run)
        if hit is not None and not state.sampled:
            self.metrics.stages_after_hit.observe(after_hit)
        return ExecutionResult(request_id=state.request_id, completed=completed, label=label, confidence=conf,
                               stages_run=stages_run, cancelled=not completed, stages_after_hit=after_hit,
                               samples=samples if completed else [], error="",
                               # misses need no relay: once this result is in, the aggregator
                               # counts every unreported cut as a miss
                               reports=[r for r in state.reports.values() if r.hit])

    def _finish(self, result: ExecutionResult) -> None:
        try:
            self.aggregator.send("finished", result)
        except PeerUnavailable as e:
            self.aggregator.warn(log, e)
            self.metrics.peer_unreachable.labels("aggregator").inc()


def make_routes(bundle: Bundle, placement: dict[str, tuple[str, int]], limits: Limits) -> dict[int, Route]:
    """cut index -> Route, from {cut name: (predictor host, port)}."""
    pools: dict[tuple[str, int], Pool] = {}
    routes = {}
    for entry in bundle.plan.entries:
        host, port = placement[entry.cut_name]
        pool = pools.setdefault((host, port), Pool(Predictor.Client, host, port, limits, name=f"predictor@{host}:{port}"))
        routes[entry.cut] = Route(entry.cut, bundle.caches[entry.cut], pool)
    return routes


def aggregator_pool(host: str, port: int, limits: Limits) -> Pool:
    return Pool(Aggregator.Client, host, port, limits, name="aggregator")
