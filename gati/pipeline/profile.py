"""Measured latencies on the serving device: each stage, each cache lookup, the whole model.

Everything is timed at batch 1 (the serving setting) as the median of repeated runs after a
warm-up, under `torch.inference_mode()`, with the thread count the engine will use, the way the
engine runs it: on a CPU stage by stage with lookups in between, on CUDA as CUDA graphs.
"""
from __future__ import annotations

import platform
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from gati.bundle.layout import CacheKey, cache_key
from gati.bundle.manifest import Profile
from gati.errors import GatiError
from gati.models.split import StagedModel
from gati.runtime.cascade import run_cascade
from gati.runtime.engine import checked_input, eager_steps, logits_head
from gati.runtime.graphs import Graphed, graphed_argmax, pin_float32_numerics
from gati.runtime.verdicts import InlineVerdicts, Lookup, judge_on_worker


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def time_ms(fn: Callable[[], object], device: str, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of `fn()` in milliseconds."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _rotation(caches: dict) -> tuple[dict[int, list[CacheKey]], int]:
    """Cut -> its cached variants, and how many passes visit each variant once."""
    by_cut: dict[int, list[CacheKey]] = {}
    for key in sorted(caches):
        by_cut.setdefault(key[0], []).append(key)
    return by_cut, max(1, max((len(keys) for keys in by_cut.values()), default=0))


def _timed(fn, *args) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1e3


def _profile_cpu(model: nn.Module, staged: StagedModel, caches: dict, x: torch.Tensor,
                 repeats: int, warmup: int = 5) -> Profile:
    """Every cost from one interleaved loop, so that all of them see the same machine.

    Each round runs the plain model, a clean staged pass (stage costs), a request as the engine serves
    it with no lookups (what it costs beyond the clean pass is every request's own cost: the input
    check, the cascade loop, the head), and a pass that looks up one
    variant per cut and times it together with the stage after it; then come the same lookup passes
    with the lookup beside that stage on a worker thread (async). A lookup's cost is what it adds to
    the clean stage: its own time plus the weights it evicts from the CPU caches. Timed in a tight
    loop, ResNet-50's fc lookups looked several times cheaper than after a stage, and costs measured
    minutes apart (stages, then lookups, then the model) disagreed (README.md, "Where the design
    changed"). On 2 cores a lookup beside a stage competes with it for the cores and costs more than
    run before it.
    """
    stages = list(staged.stages)
    by_cut, rounds = _rotation(caches)
    base: list[float] = []
    request_t: list[float] = []
    bare = _bare_request(staged, x)
    stage_t: dict[int, list[float]] = defaultdict(list)
    sync_t: dict[CacheKey, list[float]] = defaultdict(list)
    beside_t: dict[CacheKey, list[float]] = defaultdict(list)
    runs = range((warmup + repeats) * rounds)
    with ThreadPoolExecutor(1, thread_name_prefix="gati-profile") as pool, torch.inference_mode():
        for rep in runs:
            keep = rep >= warmup * rounds
            base_ms = _timed(model, x)[1]
            clean = _clean_pass(stages, x)
            request_ms = _timed(bare)[1]
            looked = _lookup_pass(stages, caches, by_cut, rep % rounds, x, None)
            if keep:
                base.append(base_ms)
                request_t.append(request_ms - sum(clean))
                _extend(stage_t, enumerate(clean))
                _extend(sync_t, looked.items())
        # async last, in a loop of its own: once the worker thread has run torch ops, its idle
        # OpenMP threads spin and slowed the plain model from 17 to 32 ms when interleaved
        for rep in runs:
            looked = _lookup_pass(stages, caches, by_cut, rep % rounds, x, pool)
            if rep >= warmup * rounds:
                _extend(beside_t, looked.items())
    stage_ms = [statistics.median(stage_t[i]) for i in range(len(stages))]

    def added(table: dict) -> dict[str, float]:
        # never quite free: a zero would let the optimizer keep caches that cost time and never hit
        return {cache_key(cut, variant): max(1e-3, statistics.median(v) - stage_ms[cut + 1])
                for (cut, variant), v in table.items()}

    return Profile("cpu", device_name("cpu"), torch.get_num_threads(), statistics.median(base), stage_ms,
                   added(sync_t), added(beside_t), torch.__version__, max(0.0, statistics.median(request_t)))


def _bare_request(staged: StagedModel, x: torch.Tensor) -> Callable[[], object]:
    """A request as the eager engine serves it at a level with no lookups (`gati.runtime.engine`)."""
    steps = eager_steps(staged.stages, staged.cuts, planned=())
    source, shape = InlineVerdicts({}), tuple(x.shape[1:])
    return lambda: run_cascade(checked_input(x, shape, x.device), steps, source, 0, logits_head).answer


def _clean_pass(stages: list[nn.Module], x: torch.Tensor) -> list[float]:
    """Milliseconds of each stage in a pass with no lookups."""
    times = []
    for stage in stages:
        x, ms = _timed(stage, x)
        times.append(ms)
    return times


def _lookup_pass(stages: list[nn.Module], caches: dict, by_cut: dict, turn: int, x: torch.Tensor,
                 pool: ThreadPoolExecutor | None) -> dict[CacheKey, float]:
    """One pass that looks up the `turn`-th variant at every cut; each lookup timed with the stage
    after it (beside it on `pool`'s thread when given)."""
    times = {}
    h = stages[0](x)
    for i in range(len(stages) - 1):
        keys = by_cut.get(i, [])
        if turn >= len(keys):
            h = stages[i + 1](h)
            continue
        h, times[keys[turn]] = _timed(_lookup_then_stage, pool, caches[keys[turn]], stages[i + 1], h)
    return times


def _extend(table: dict, items) -> None:
    for key, ms in items:
        table[key].append(ms)


def _lookup_then_stage(pool: ThreadPoolExecutor | None, cache, stage: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """What the engine does at a planned cut: judge the lookup (before the stage, or beside it)."""
    lookup = Lookup(cache, float("inf"))
    if pool is None:
        lookup.judge(0, h)
        return stage(h)
    future = pool.submit(judge_on_worker, lookup, 0, h)
    out = stage(h)
    future.result()
    return out


def profile_model(model: nn.Module, staged: StagedModel, caches: dict, x: torch.Tensor,
                  device: str, repeats: int = 30) -> Profile:
    """Profile a model and its candidate caches; `caches` maps (cut, variant) -> Cache."""
    if device.startswith("cuda"):
        pin_float32_numerics()  # as the engine serves: the costs must be those of what is served
        return _profile_cuda(model, staged, caches, x, device, repeats)
    if device != "cpu":
        raise GatiError(f"cannot profile on device {device!r}: use 'cpu' or 'cuda[:N]'")
    return _profile_cpu(model, staged, caches, x, repeats)


def _profile_cuda(model: nn.Module, staged: StagedModel, caches: dict, x: torch.Tensor,
                  device: str, repeats: int) -> Profile:
    """The costs of the CUDA-graph engine (`gati.runtime.graphs`): what it launches is what is timed.

    Stages: each stage as a graph, replayed back to back, timed on the GPU by events (no host
    round trip between them, as inside a segment). Lookups: a graph of the lookup plus the host's
    read-back of its verdict, the round trip every planned cut costs. Base: the whole model as one
    graph with its read-back. Caches that cannot run in a graph (kNN searches on the host) are not
    candidates on CUDA. There is no async mode on CUDA, so no overlap is measured.
    """
    graphs, acts, h = [], [], x
    for stage in staged.stages:
        graphs.append(Graphed(stage, h, static_input=not graphs))
        h = graphs[-1].output
        acts.append(h)
    samples: list[list[float]] = [[] for _ in graphs]
    for rep in range(5 + repeats):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(graphs) + 1)]
        events[0].record()
        for i, g in enumerate(graphs):
            g(x if i == 0 else None)
            events[i + 1].record()
        torch.cuda.synchronize()
        if rep >= 5:
            for i in range(len(graphs)):
                samples[i].append(events[i].elapsed_time(events[i + 1]))
    stage_ms = [statistics.median(s) for s in samples]
    lookup_ms = {}
    for (cut, variant), cache in caches.items():
        if cache.graphable:
            g = Graphed(lambda a, c=cache: torch.stack([t[0].float() for t in c.lookup(a)]), acts[cut])
            lookup_ms[cache_key(cut, variant)] = time_ms(lambda g=g: g().tolist(), device, repeats)
    base = graphed_argmax(model, x)
    base_ms = time_ms(lambda: base(x), device, repeats)
    return Profile(device, device_name(device), torch.get_num_threads(), base_ms, stage_ms, lookup_ms, {},
                   torch.__version__)
