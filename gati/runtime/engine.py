"""The in-process runtime: run stages in order, consult the plan's caches, stop at the first hit.

Two modes, both measured by `gati eval` and modelled by the optimizer:

- sync: after a cut that carries a cache, look it up, then run the next stage. On a CPU a lookup
  costs a few percent of a stage, so this is usually best.
- async: hand the lookup to a worker thread and run the next stage meanwhile; the answer is checked
  once that stage is done. The lookup is hidden, but a hit is only acted on one stage later.

On CUDA, sync mode runs as CUDA graphs (`gati.runtime.graphs`): one graph per segment between planned
cuts, and the baseline as one graph of the whole model, because at batch 1 a GPU is bound by
kernel launches and eager stages would compare a slow GATI with a slow baseline.

Cancellation is cooperative: `predict(..., cancel=event)` checks the event between stages and
raises `Cancelled`, leaving no state behind (the engine holds none per request).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from gati.bundle import Bundle
from gati.cache.base import confidence_and_label
from gati.errors import Cancelled, GatiError, InvalidInput
from gati.runtime.graphs import GraphedCascade, graphed_argmax


@dataclass
class Answer:
    label: int
    confidence: float
    exit_cut: int | None   # the cut whose cache answered; None when the whole model ran
    exit_name: str         # the cut's name, or "final"
    stages_run: int


class Engine:
    def __init__(self, bundle: Bundle, mode: str | None = None):
        self.bundle = bundle
        self.mode = mode or bundle.plan.mode
        if self.mode not in ("sync", "async"):
            raise GatiError(f"engine mode must be 'sync' or 'async', got {self.mode!r}")
        self.stages = list(bundle.staged.stages)
        self.device = next(bundle.model.parameters()).device
        # cut index -> (cache, threshold): the only per-cut work the hot loop looks up
        self.lookups = {e.cut: (bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gati-lookup") if self.mode == "async" else None
        self._graphs: GraphedCascade | None = None
        self._base: Callable[[torch.Tensor], int] | None = None
        if self.device.type == "cuda" and self.mode == "sync":
            example = torch.zeros(1, *bundle.input_shape, device=self.device)
            entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
            self._graphs = GraphedCascade(self.stages, entries, example)
            self._base = graphed_argmax(bundle.model, example)

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """A single preprocessed image as 1 x C x H x W float32 on the engine's device (on the CUDA
        graph path: checked for shape and dtype only, and left where it is)."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        expected = (1, *self.bundle.input_shape)
        if tuple(x.shape) != expected:
            raise InvalidInput(f"expected one image of shape {expected} (or {expected[1:]}), "
                               f"got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise InvalidInput(f"expected a floating-point tensor (preprocessed image), got {x.dtype}")
        if self._graphs is not None:
            return x  # copied and converted straight into the first graph's input; NaN checked there
        x = x.to(self.device, torch.float32)
        if not torch.isfinite(x).all():
            raise InvalidInput("input contains NaN or infinite values")
        return x

    def predict_base(self, x: torch.Tensor) -> int:
        """The baseline: the unsplit model, same dtype, device and threads as the stages."""
        if self._base is not None:
            return self._base(x)
        with torch.inference_mode():
            return int(self.bundle.model(x.to(self.device)).argmax(1).item())

    def predict(self, x: torch.Tensor, cancel: threading.Event | None = None) -> Answer:
        x = self.validate(x)
        if self._graphs is not None:
            return self._run_graphs(x, cancel)
        with torch.inference_mode():
            if self._pool is not None:
                return self._run_async(x, cancel)
            return self._run_sync(x, cancel)

    def _run_sync(self, x: torch.Tensor, cancel: threading.Event | None) -> Answer:
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled before stage {i}")
            x = stage(x)
            lookup = self.lookups.get(i) if i < last else None
            if lookup is not None:
                label, conf = lookup[0].lookup(x)
                confidence = float(conf[0])
                if confidence >= lookup[1]:
                    return Answer(int(label[0]), confidence, i, self.bundle.staged.cuts[i], i + 1)
        return self._final(x)

    def _run_async(self, x: torch.Tensor, cancel: threading.Event | None) -> Answer:
        last = len(self.stages) - 1
        pending: tuple[int, Future] | None = None
        for i, stage in enumerate(self.stages):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled before stage {i}")
            x = stage(x)
            if pending is not None:  # the lookup that overlapped this stage
                answer = self._check(pending, i + 1)
                pending = None
                if answer is not None:
                    return answer
            lookup = self.lookups.get(i) if i < last else None
            if lookup is not None:
                pending = (i, self._pool.submit(lookup_on_worker, lookup[0], x))
        return self._final(x)

    def _run_graphs(self, x: torch.Tensor, cancel: threading.Event | None) -> Answer:
        out = self._graphs(x, cancel)
        if out.entry is None:
            return Answer(out.label, out.confidence, None, "final", len(self.stages))
        cut = self._graphs.cuts[out.entry]
        return Answer(out.label, out.confidence, cut, self.bundle.staged.cuts[cut], cut + 1)

    def _check(self, pending: tuple[int, Future], stages_run: int) -> Answer | None:
        cut, future = pending
        label, conf = future.result()
        confidence = float(conf[0])
        if confidence >= self.lookups[cut][1]:
            return Answer(int(label[0]), confidence, cut, self.bundle.staged.cuts[cut], stages_run)
        return None

    def _final(self, logits: torch.Tensor) -> Answer:
        label, conf = confidence_and_label(logits)
        return Answer(int(label.item()), float(conf.item()), None, "final", len(self.stages))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def lookup_on_worker(cache, act: torch.Tensor):
    """`cache.lookup(act)` for a thread pool's worker (async mode, and the profile that times it)."""
    with torch.inference_mode():  # inference mode is thread-local
        return cache.lookup(act)
