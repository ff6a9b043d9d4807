"""CUDA graphs for batch-1 serving: launch work as few graphs as the host's decisions allow.

At batch 1 a CIFAR ResNet on a GPU is bound by kernel launches, not arithmetic (docs/results.md
has the measured eager and graphed times). The plain-model baseline is therefore one graph, and the cascade is one graph per *segment*: the stages from one planned cut to the
next plus that cut's lookup. The host reads back one small tensor (confidence and label) per
segment, the only synchronisation a cascade needs to decide whether to go on.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gati.cache.base import confidence_and_label
from gati.errors import GatiError, InvalidInput
from gati.runtime.cascade import Done, Step, Verdict

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


def pin_float32_numerics() -> None:
    """Run CUDA convolutions and matrix products in full float32 (PyTorch allows TF32 for convolutions
    by default): calibration scores are float32, and the certificate covers those numerics only."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def graphed_argmax(model: nn.Module, example: Tensor) -> Callable[[Tensor], int]:
    """The baseline on CUDA: the whole model and its argmax as one graph; one read-back per call."""
    g = Graphed(lambda x: model(x).argmax(1), example)
    return lambda x: int(g(x).item())


class GraphedCascade:
    """Stages and planned lookups as chained graphs, one per segment between two planned cuts.

    `entries` are (cut, cache, threshold) in cut order; every cache must be `graphable`.
    `capture` wraps each segment (`Graphed`; the tests pass an eager stand-in to check the
    segmentation on machines without a GPU).
    Segment j runs the stages after the previous planned cut up to cut j, then the lookup, and
    outputs the activation (the next segment's input, read in place) and [confidence, label,
    input finite] (the first segment also checks the request for NaN/inf, inside the graph).

    It serves `run_cascade` as its steps (`steps()`), its verdict source (`ask`: read back the
    verdict the segment's graph already computed) and its head (the last segment's verdict).
    """

    def __init__(self, stages: Sequence[nn.Module], entries: Sequence[tuple[int, object, float]],
                 example: Tensor, capture: Callable[..., Graphed] = Graphed):
        for cut, cache, _ in entries:
            if not cache.graphable:
                raise GatiError(f"the {cache.variant} cache at cut {cut} cannot run inside a CUDA graph "
                                "(it reads back to the host); re-plan for this device: "
                                "gati plan --bundle B --device cuda")
        self.thresholds = {c: t for c, _, t in entries}
        self.cuts = [c for c, _, _ in entries]
        self.bounds = [-1, *self.cuts, len(stages) - 1]   # segment j runs stages bounds[j]+1 .. bounds[j+1]
        self.segments: list[Graphed] = []
        x, copy_in = example, True
        for j in range(len(self.bounds) - 1):
            run = list(stages[self.bounds[j] + 1: self.bounds[j + 1] + 1])
            cache = entries[j][1] if j < len(entries) else None
            g = capture(_segment(run, cache, check_input=(j == 0)), x, static_input=copy_in)
            self.segments.append(g)
            x, copy_in = g.output[0], False

    def judged_at(self, thresholds: dict[int, float]) -> GraphedCascade:
        """The same segments as a verdict source that judges their verdicts at other thresholds (a level)."""
        view = copy.copy(self)
        view.thresholds = dict(thresholds)
        return view

    def steps(self, cut_names: Sequence[str]) -> list[Step]:
        """One step per segment; only the first copies the request in (the others read in place)."""
        return [Step(self._runner(j), self.bounds[j + 1] + 1, cut, cut_names[cut] if cut is not None else "")
                for j, cut in enumerate([*self.cuts, None])]

    def _runner(self, j: int) -> Callable[[Tensor], Tensor]:
        segment = self.segments[j]
        if j == 0:
            return lambda x: segment(x)[0]
        return lambda _: segment()[0]

    def ask(self, cut: int, act: Tensor) -> Done:
        j = self.cuts.index(cut)
        conf, label = self._read(j)
        return Done(Verdict.judge(cut, int(label), conf, self.thresholds[cut]))

    def head(self, _: Tensor) -> tuple[int, float]:
        conf, label = self._read(len(self.segments) - 1)
        return int(label), conf

    def _read(self, j: int) -> tuple[float, float]:
        conf, label, finite = self.segments[j].output[1].tolist()  # the one host synchronisation of a segment
        if not finite:  # computed by the first graph: no extra round trip per request
            raise InvalidInput("input contains NaN or infinite values")
        return conf, label


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
