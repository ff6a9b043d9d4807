"""The in-process runtime: a bundle's stages and planned caches run by the cascade loop.

Two modes, both measured by `gati eval` and modelled by the optimizer:

- sync: after a cut that carries a cache, look it up, then run the next stage. On a CPU a lookup
  costs a few percent of a stage, so this is usually best.
- async: hand the lookup to a worker thread and run the next stage meanwhile; the answer is checked
  once that stage is done. The lookup is hidden, but a hit is only acted on one stage later.

On CUDA, sync mode runs as CUDA graphs (`gati.runtime.graphs`): one graph per segment between
planned cuts, and the baseline as one graph of the whole model, because at batch 1 a GPU is bound
by kernel launches and eager stages would compare a slow GATI with a slow baseline.

Levels: a plan keeps a few certified threshold vectors (`Plan.levels`: 0 is no early exits, the last the
chosen vector). `use_level(i)` switches between them; each level's steps and verdict source are built
once, and a request reads the level once when it starts, so it is served by one level from start to end
(a switch takes effect between requests). The fallback rule of `gati.learning.guarantee` drives it.

Cancellation is cooperative: `predict(..., cancel=event)` checks the event between stages and
raises `Cancelled`, leaving no state behind (the engine holds none per request).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from gati.bundle import Bundle
from gati.cache.base import confidence_and_label
from gati.errors import Cancelled, GatiError, InvalidInput
from gati.runtime.cascade import Answer, Step, Trace, VerdictSource, run_cascade
from gati.runtime.graphs import GraphedCascade, graphed_argmax, pin_float32_numerics
from gati.runtime.plan import LOOKAHEAD
from gati.runtime.verdicts import InlineVerdicts, Lookup, ThreadVerdicts

__all__ = ["Answer", "Cancelled", "Engine", "Level"]


@dataclass(frozen=True)
class Level:
    """What a request is served with at one level: the steps and the verdict source, swapped whole."""
    index: int
    thresholds: tuple[float, ...]   # one per plan entry; inf: that cut never answers at this level
    steps: list[Step]
    source: VerdictSource


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
        self._pool: ThreadPoolExecutor | None = None
        if self.device.type == "cuda":
            pin_float32_numerics()  # the numerics the calibration scores were computed in
        if graphs is None:
            graphs = self.device.type == "cuda" and self.mode == "sync"
        if graphs and (self.device.type != "cuda" or self.mode != "sync"):
            raise GatiError("CUDA graphs need a CUDA device and a sync plan")
        vectors = bundle.plan.levels
        if graphs:
            self.levels = self._graph(bundle, vectors)
        else:
            self.levels = self._eager(bundle, vectors)
        self._level = self.levels[-1]

    def _eager(self, bundle: Bundle, vectors: list[list[float]]) -> list[Level]:
        """One step per stage; a planned cut's lookup follows its stage (never after the head). A cut whose
        threshold is infinite at a level is not looked up there: level 0 runs the stages and nothing else."""
        if self.mode == "async":
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="gati-lookup")
        levels = []
        for index, vector in enumerate(vectors):
            planned = {e.cut: Lookup(bundle.caches[e.cut], t) for e, t in zip(bundle.plan.entries, vector)
                       if e.cut < len(self.stages) - 1 and math.isfinite(t)}
            steps = eager_steps(self.stages, bundle.staged.cuts, planned)
            source = ThreadVerdicts(planned, self._pool) if self._pool is not None else InlineVerdicts(planned)
            levels.append(Level(index, tuple(vector), steps, source))
        self.head = logits_head
        return levels

    def _graph(self, bundle: Bundle, vectors: list[list[float]]) -> list[Level]:
        """The segments are captured once; a level only changes the thresholds the host judges the verdicts
        it reads back with (level 0 still reads each segment's verdict: correct, not free)."""
        example = torch.zeros(1, *bundle.input_shape, device=self.device)
        entries = [(e.cut, bundle.caches[e.cut], e.threshold) for e in bundle.plan.entries]
        self._graphs = GraphedCascade(self.stages, entries, example)
        self._base = graphed_argmax(bundle.model, example)
        steps = self._graphs.steps(bundle.staged.cuts)
        self.head = self._graphs.head
        levels = []
        for index, vector in enumerate(vectors):
            source = self._graphs.judged_at({e.cut: t for e, t in zip(bundle.plan.entries, vector)})
            levels.append(Level(index, tuple(vector), steps, source))
        return levels

    @property
    def graphed(self) -> bool:
        return self._graphs is not None

    @property
    def level(self) -> int:
        """The level the next request is served with."""
        return self._level.index

    def use_level(self, index: int) -> None:
        """Serve from the next request on with level `index` (0: no early exits; len(levels) - 1: the plan's)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.levels):
            raise GatiError(f"level must be an integer in 0..{len(self.levels) - 1}, got {index!r}")
        self._level = self.levels[index]  # one reference swap: a request in flight keeps the level it read

    @property
    def steps(self) -> list[Step]:
        return self._level.steps

    @property
    def source(self) -> VerdictSource:
        return self._level.source

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """A single preprocessed image as 1 x C x H x W float32 on the engine's device (on the CUDA
        graph path: checked for shape and dtype only, and left where it is)."""
        if self._graphs is not None:
            return checked_shape(x, self.bundle.input_shape)  # copied into the first graph's input; NaN checked there
        return checked_input(x, self.bundle.input_shape, self.device)

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
        level = self._level  # read once: the whole request is served by one level
        with torch.inference_mode():
            return run_cascade(x, level.steps, level.source, self.lookahead, self.head, shadow=shadow,
                               stop=cancel.is_set if cancel is not None else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def eager_steps(stages: Sequence[torch.nn.Module], cut_names: Sequence[str], planned: Collection[int]) -> list[Step]:
    """One step per stage; the stages after which a lookup is asked are those in `planned`."""
    return [Step(stage, i + 1, i if i in planned else None, cut_names[i] if i in planned else "")
            for i, stage in enumerate(stages)]


def checked_shape(x: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """A single preprocessed image as 1 x C x H x W, of a floating-point dtype; else `InvalidInput`."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    expected = (1, *input_shape)
    if tuple(x.shape) != expected:
        raise InvalidInput(f"expected one image of shape {expected} (or {expected[1:]}), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise InvalidInput(f"expected a floating-point tensor (preprocessed image), got {x.dtype}")
    return x


def checked_input(x: torch.Tensor, input_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """`checked_shape`, as float32 on `device`, with finite values only."""
    x = checked_shape(x, input_shape).to(device, torch.float32)
    if not torch.isfinite(x).all():
        raise InvalidInput("input contains NaN or infinite values")
    return x


def logits_head(logits: torch.Tensor) -> tuple[int, float]:
    """The eager engine's answer from the last stage's logits: the label and its softmax confidence."""
    label, conf = confidence_and_label(logits)
    return int(label.item()), float(conf.item())
