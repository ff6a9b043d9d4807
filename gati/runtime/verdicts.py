"""Verdict sources of the in-process engine: a planned cut's cache looked up inline or beside the next stage.

Both hold, per planned cut, the cache and its threshold. `InlineVerdicts` looks up on the calling
thread before the loop goes on (sync mode, lookahead 0). `ThreadVerdicts` hands the lookup to a
worker thread so that it runs beside the next stage (async mode, lookahead 1). The cluster's source
is `gati.rpc.executor.RemoteVerdicts`; the CUDA-graph one is `gati.runtime.graphs.GraphedCascade`.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from gati.cache import Cache
from gati.runtime.cascade import Done, Verdict


@dataclass(frozen=True)
class Lookup:
    """What a planned cut consults: its cache and the threshold at which the cache's answer is used."""
    cache: Cache
    threshold: float

    def judge(self, cut: int, act: Tensor) -> Verdict:
        label, conf = self.cache.lookup(act)
        return Verdict.judge(cut, int(label[0]), float(conf[0]), self.threshold)


class InlineVerdicts:
    def __init__(self, lookups: dict[int, Lookup]):
        self.lookups = lookups

    def ask(self, cut: int, act: Tensor) -> Done:
        return Done(self.lookups[cut].judge(cut, act))


@dataclass(frozen=True)
class _Pending:
    future: Future

    def verdict(self) -> Verdict | None:
        return self.future.result()


class ThreadVerdicts:
    """Lookups on a worker thread: its own, or `pool` when given (sources that share one worker; its owner
    shuts it down)."""

    def __init__(self, lookups: dict[int, Lookup], pool: ThreadPoolExecutor | None = None):
        self.lookups = lookups
        self._own = pool is None
        self._pool = pool or ThreadPoolExecutor(1, thread_name_prefix="gati-lookup")

    def ask(self, cut: int, act: Tensor) -> _Pending:
        return _Pending(self._pool.submit(judge_on_worker, self.lookups[cut], cut, act))

    def close(self) -> None:
        if self._own:
            self._pool.shutdown(wait=True)


def judge_on_worker(lookup: Lookup, cut: int, act: Tensor) -> Verdict:
    """`lookup.judge` for a thread pool's worker (async mode, and the profile that times it)."""
    with torch.inference_mode():  # inference mode is thread-local
        return lookup.judge(cut, act)
