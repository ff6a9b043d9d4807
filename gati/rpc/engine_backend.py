"""The aggregator's in-process backend (`--role all`): the engine behind the same Thrift front door.

Its own module because it holds the model: the cluster's aggregator (gati/rpc/aggregator.py) never imports torch.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from gati.learning.online import OnlineAnswer, OnlineEngine
from gati.rpc.aggregator import Outcome
from gati.rpc.gen.gati_idl.ttypes import ExecutionResult, ShadowResult
from gati.rpc.metrics import AggregatorMetrics
from gati.runtime.engine import Engine


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

    def run(self, x: np.ndarray, deadline: float, sampled: bool) -> Outcome:
        served = self.engine.predict(torch.from_numpy(x))
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
