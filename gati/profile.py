"""Measured latencies on the serving device: each stage, each cache lookup, the whole model.

Everything is timed at batch 1 (the serving setting) as the median of repeated runs after a
warm-up, under `torch.inference_mode()`, with the thread count the engine will use. On CUDA each
run is synchronised so the time is the device's, not the launch's.
"""
from __future__ import annotations

import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .models.split import StagedModel


@dataclass
class Profile:
    device: str
    device_name: str
    threads: int
    base_ms: float                       # the unsplit model
    stage_ms: list[float]                # one per stage (the last is the head)
    lookup_ms: dict[str, float] = field(default_factory=dict)   # "cut:variant" -> ms
    overlap_ms: dict[str, float] = field(default_factory=dict)  # "cut:variant" -> ms added (async)
    torch_version: str = torch.__version__

    def lookup(self, cut: int, variant: str) -> float:
        return self.lookup_ms[f"{cut}:{variant}"]

    def overlap(self, cut: int, variant: str) -> float | None:
        """What the lookup adds to the next stage when run beside it; None if never measured."""
        return self.overlap_ms.get(f"{cut}:{variant}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(**d)


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


def stage_times_ms(staged: StagedModel, x: torch.Tensor, device: str, repeats: int = 30,
                   warmup: int = 5) -> list[float]:
    """Median time of each stage *within* whole passes of the staged model.

    Timing one stage in a tight loop keeps its weights in the CPU caches and flatters it (by a
    third for ResNet-50's middle stages here); inside a real pass the other stages evict them.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    samples: list[list[float]] = [[] for _ in staged.stages]
    with torch.inference_mode():
        for rep in range(warmup + repeats):
            h = x
            for i, stage in enumerate(staged.stages):
                sync()
                start = time.perf_counter()
                h = stage(h)
                sync()
                if rep >= warmup:
                    samples[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(s) for s in samples]


def _rotation(caches: dict) -> tuple[dict[int, list[tuple[int, str]]], int]:
    """Cut -> its cached variants, and how many passes visit each variant once."""
    by_cut: dict[int, list[tuple[int, str]]] = {}
    for key in sorted(caches):
        by_cut.setdefault(key[0], []).append(key)
    return by_cut, max((len(keys) for keys in by_cut.values()), default=0)


def lookup_times_ms(staged: StagedModel, caches: dict, x: torch.Tensor, device: str,
                    repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median time of each cache lookup *within* whole passes, as the sync engine runs it.

    A lookup timed in a tight loop finds its weights in the CPU caches; after a stage it does not.
    Measured in a loop, ResNet-50's fc lookups took 0.05-0.18 ms, inside passes 0.2-0.5 ms, and the
    optimizer, believing the loop, chose ten caches whose lookups ate a sixth of the gain. Each pass
    looks up one variant per cut (rotating through them), as a plan with a cache at every cut would.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_cut, rounds = _rotation(caches)
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in caches}
    with torch.inference_mode():
        for rep in range((warmup + repeats) * rounds):
            h = x
            for i, stage in enumerate(staged.stages):
                h = stage(h)
                keys = by_cut.get(i, [])
                if rep % rounds < len(keys):
                    sync()
                    start = time.perf_counter()
                    caches[keys[rep % rounds]](h)
                    sync()
                    if rep >= warmup * rounds:
                        samples[keys[rep % rounds]].append((time.perf_counter() - start) * 1e3)
    return {f"{cut}:{variant}": statistics.median(s) for (cut, variant), s in samples.items()}


def overlap_times_ms(staged: StagedModel, caches: dict, x: torch.Tensor, device: str,
                     stage_ms: list[float], repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """What each lookup adds to the next stage when it runs beside it on a worker thread (async).

    Not max(0, lookup - stage): on a CPU the stage already keeps busy, the two compete for cores
    (on 2 cores, async plans ran 1.7x slower than this model's naive form predicted).
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_cut, rounds = _rotation(caches)
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in caches}
    last = len(staged.stages) - 1
    with ThreadPoolExecutor(1, thread_name_prefix="gati-profile") as pool, torch.inference_mode():
        for rep in range((warmup + repeats) * rounds):
            h = x
            for i, stage in enumerate(staged.stages):
                h = stage(h)
                keys = by_cut.get(i, [])
                if i == last or rep % rounds >= len(keys):
                    continue
                key = keys[rep % rounds]
                sync()
                start = time.perf_counter()
                future = pool.submit(_in_inference_mode, caches[key], h)
                staged.stages[i + 1](h)
                future.result()
                sync()
                if rep >= warmup * rounds:
                    samples[key].append((time.perf_counter() - start) * 1e3 - stage_ms[i + 1])
    return {f"{cut}:{variant}": max(0.0, statistics.median(s)) for (cut, variant), s in samples.items() if s}


def _in_inference_mode(cache, act: torch.Tensor):
    with torch.inference_mode():  # inference mode is thread-local
        return cache(act)


def profile_model(model: nn.Module, staged: StagedModel, caches: dict, x: torch.Tensor,
                  device: str, repeats: int = 30) -> Profile:
    """Profile a model and its candidate caches; `caches` maps (cut, variant) -> Cache."""
    stage_ms = stage_times_ms(staged, x, device, repeats)
    lookup_ms = lookup_times_ms(staged, caches, x, device, repeats)
    overlap_ms = overlap_times_ms(staged, caches, x, device, stage_ms, repeats)
    base_ms = time_ms(lambda: model(x), device, repeats)
    return Profile(device, device_name(device), torch.get_num_threads(), base_ms, stage_ms, lookup_ms,
                   overlap_ms)
