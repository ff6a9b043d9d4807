"""Measured latencies on the serving device: each stage, each cache lookup, the whole model.

Everything is timed at batch 1 (the serving setting) as the median of repeated runs after a
warm-up, under `torch.inference_mode()`, with the thread count the engine will use. On CUDA each
run is synchronised so the time is the device's, not the launch's.
"""
from __future__ import annotations

import platform
import statistics
import time
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
    torch_version: str = torch.__version__

    def lookup(self, cut: int, variant: str) -> float:
        return self.lookup_ms[f"{cut}:{variant}"]

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


def stage_inputs(staged: StagedModel, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every stage for one example: stage i's input is cut i-1's activation."""
    inputs = []
    with torch.inference_mode():
        for stage in staged.stages:
            inputs.append(x)
            x = stage(x)
    return inputs


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


def profile_model(model: nn.Module, staged: StagedModel, caches: dict, x: torch.Tensor,
                  device: str, repeats: int = 30) -> Profile:
    """Profile a model and its candidate caches; `caches` maps (cut, variant) -> Cache."""
    inputs = stage_inputs(staged, x)
    stage_ms = stage_times_ms(staged, x, device, repeats)
    lookup_ms = {f"{cut}:{variant}": time_ms(lambda c=cache, a=inputs[cut + 1]: c(a), device, repeats)
                 for (cut, variant), cache in caches.items()}
    base_ms = time_ms(lambda: model(x), device, repeats)
    return Profile(device, device_name(device), torch.get_num_threads(), base_ms, stage_ms, lookup_ms)
