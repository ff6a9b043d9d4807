"""CUDA graphs for batch-1 serving: launch work as few graphs as the host's decisions allow.

At batch 1 a CIFAR ResNet on a GPU is bound by kernel launches, not arithmetic: an H100 runs
ResNet-18 in 2.3 ms eagerly but in 0.44 ms as one CUDA graph. The plain-model baseline is therefore
one graph, and the cascade is one graph per *segment*: the stages from one planned cut to the
next plus that cut's lookup. The host reads back one small tensor (confidence and label) per
segment, the only synchronisation a cascade needs to decide whether to go on.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gati.cache.base import confidence_and_label
from gati.errors import Cancelled, GatiError, InvalidInput

WARMUP = 3  # eager runs on a side stream before capture (cuDNN picks its algorithms here)


class Graphed:
    """`fn` captured once on a static input; calling it copies `x` in and replays the graph.

    The returned tensors are the graph's own static outputs: they are overwritten by the next call,
    so read them (or chain them into another graph) before calling again.
    """

    def __init__(self, fn: Callable[[Tensor], object], example: Tensor, static_input: bool = True):
        if example.device.type != "cuda":
            raise GatiError(f"CUDA graphs need a CUDA tensor, got one on {example.device}")
        # static_input=False: `example` is another graph's output, read in place (no copy)
        self.input = example.clone() if static_input else example
        self._copy = static_input
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP):
                fn(self.input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.output = fn(self.input)

    def __call__(self, x: Tensor | None = None):
        if x is not None and self._copy:
            self.input.copy_(x)
        self.graph.replay()
        return self.output


def graphed_argmax(model: nn.Module, example: Tensor) -> Callable[[Tensor], int]:
    """The baseline on CUDA: the whole model and its argmax as one graph; one read-back per call."""
    g = Graphed(lambda x: model(x).argmax(1), example)
    return lambda x: int(g(x).item())


@dataclass
class Exit:
    """Where a cascade answered: the index of the plan entry (None: the whole model ran)."""
    label: int
    confidence: float
    entry: int | None


class GraphedCascade:
    """Stages and planned lookups as chained graphs, one per segment between two planned cuts.

    `entries` are (cut, cache, threshold) in cut order; every cache must be `graphable`.
    `capture` wraps each segment (`Graphed`; the tests pass an eager stand-in to check the
    segmentation on machines without a GPU).
    Segment j runs the stages after the previous planned cut up to cut j, then the lookup, and
    outputs the activation (the next segment's input, read in place) and [confidence, label,
    input finite] (the first segment also checks the request for NaN/inf, inside the graph).
    """

    def __init__(self, stages: Sequence[nn.Module], entries: Sequence[tuple[int, object, float]],
                 example: Tensor, capture: Callable[..., Graphed] = Graphed):
        for cut, cache, _ in entries:
            if not cache.graphable:
                raise GatiError(f"the {cache.variant} cache at cut {cut} cannot run inside a CUDA graph "
                                "(it reads back to the host); re-plan for this device: "
                                "gati plan --bundle B --device cuda")
        self.thresholds = [t for _, _, t in entries]
        self.cuts = [c for c, _, _ in entries]
        bounds = [-1, *self.cuts, len(stages) - 1]
        self.segments: list[Graphed] = []
        x, copy_in = example, True
        for j in range(len(bounds) - 1):
            run = list(stages[bounds[j] + 1: bounds[j + 1] + 1])
            cache = entries[j][1] if j < len(entries) else None
            g = capture(_segment(run, cache, check_input=(j == 0)), x, static_input=copy_in)
            self.segments.append(g)
            x, copy_in = g.output[0], False

    def __call__(self, x: Tensor, cancel: threading.Event | None = None) -> Exit:
        for j, g in enumerate(self.segments):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled before segment {j}")
            _, verdict = g(x if j == 0 else None)
            conf, label, finite = verdict.tolist()  # the one host synchronisation of a segment
            if not finite:  # checked inside the first graph: no extra round trip per request
                raise InvalidInput("input contains NaN or infinite values")
            if j == len(self.thresholds):
                return Exit(int(label), conf, None)
            if conf >= self.thresholds[j]:
                return Exit(int(label), conf, j)
        raise AssertionError("unreachable: the last segment always answers")


def _segment(stages: list[nn.Module], cache, check_input: bool) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        finite = torch.isfinite(x).all().float() if check_input else torch.ones((), device=x.device)
        for stage in stages:
            x = stage(x)
        if cache is not None:
            label, conf = cache.lookup(x)
        else:  # the head: the model's own answer
            label, conf = confidence_and_label(x)
        return x, torch.stack([conf[0].float(), label[0].float(), finite])
    return run
