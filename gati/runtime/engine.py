"""The in-process runtime: a bundle's stages and planned caches run by the cascade loop.

Two modes, both measured by `gati eval` and modelled by the optimizer:

- sync: after a cut that carries a cache, look it up, then run the next stage. On a CPU a lookup
  costs a few percent of a stage, so this is usually best.
- async: hand the lookup to a worker thread and run the next stage meanwhile; the answer is checked
  once that stage is done. The lookup is hidden, but a hit is only acted on one stage later.

On CUDA, sync mode runs as CUDA graphs (`gati.runtime.graphs`): one graph per segment between
planned cuts, and the baseline as one graph of the whole model, because at batch 1 a GPU is bound
by kernel launches and eager stages would compare a slow GATI with a slow baseline.

Cancellation is cooperative: `predict(..., cancel=event)` checks the event between stages and
raises `Cancelled`, leaving no state behind (the engine holds none per request).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from gati.bundle import Bundle
from gati.cache.base import confidence_and_label
from gati.errors import Cancelled, GatiError, InvalidInput
from gati.runtime.cascade import Answer, Step, Trace, VerdictSource, run_cascade
from gati.runtime.graphs import GraphedCascade, graphed_argmax, pin_float32_numerics
from gati.runtime.plan import LOOKAHEAD
from gati.runtime.verdicts import InlineVerdicts, Lookup, ThreadVerdicts

__all__ = ["Answer", "Cancelled", "Engine"]


class Engine:
    def __init__(self, bundle: Bundle, mode: str | None = None, graphs: bool | None = None):
        """`graphs`: run as CUDA graphs (default: on a CUDA device in sync mode, the only way there)."""
        self.bundle = bundle
        self.mode = mode or bundle.plan.mode
        if self.mode not in LOOKAHEAD:
            raise GatiError(f"engine mode must be one of {sorted(LOOKAHEAD)}, got {self.mode!r}")
        self.lookahead = LOOKAHEAD[self.mode]
        self.stages = list(bundle.staged.stages)
        self.device = next(bundle.model.parameters()).device
        self._graphs: GraphedCascade | None = None
        self._base: Callable[[torch.Tensor], int] | None = None
        if self.device.type == "cuda":
            pin_float32_numerics()  # the numerics the calibration scores were computed in
        if graphs is None:
            graphs = self.device.type == "cuda" and self.mode == "sync"
        if graphs and (self.device.type != "cuda" or self.mode != "sync"):
            raise GatiError("CUDA graphs need a CUDA device and a sync plan")
        if graphs:
            self._graph(bundle)
        else:
            self._eager(bundle)

    def _eager(self, bundle: Bundle) -> None:
        """One step per stage; a planned cut's lookup follows its stage (never after the head)."""
        planned = {e.cut: Lookup(bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries
                   if e.cut < len(self.stages) - 1}
        cuts = bundle.staged.cuts
        self.steps = [Step(stage, i + 1, i if i in planned else None, cuts[i] if i in planned else "")
                      for i, stage in enumerate(self.stages)]
        self.source: VerdictSource = ThreadVerdicts(planned) if self.mode == "async" else InlineVerdicts(planned)
        self.head = _logits_head

    def _graph(self, bundle: Bundle) -> None:
        example = torch.zeros(1, *bundle.input_shape, device=self.device)
        entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
        self._graphs = GraphedCascade(self.stages, entries, example)
        self._base = graphed_argmax(bundle.model, example)
        self.steps = self._graphs.steps(bundle.staged.cuts)
        self.source, self.head = self._graphs, self._graphs.head

    @property
    def graphed(self) -> bool:
        return self._graphs is not None

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
        return self.trace(x, cancel).answer

    def trace(self, x: torch.Tensor, cancel: threading.Event | None = None, shadow: bool = False) -> Trace:
        """One request through the cascade; `shadow` runs it to the end after a hit as well."""
        x = self.validate(x)
        with torch.inference_mode():
            return run_cascade(x, self.steps, self.source, self.lookahead, self.head, shadow=shadow,
                               stop=cancel.is_set if cancel is not None else None)

    def close(self) -> None:
        if isinstance(self.source, ThreadVerdicts):
            self.source.close()


def _logits_head(logits: torch.Tensor) -> tuple[int, float]:
    label, conf = confidence_and_label(logits)
    return int(label.item()), float(conf.item())
