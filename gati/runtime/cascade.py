"""The cascade: run the stages in order, ask about each planned cut, stop at the first hit.

This is the one place the request path's rule is written. The in-process engine (sync and async),
the CUDA-graph engine and the cluster's executor all run `run_cascade`; they differ only in

- their *steps*: one per stage (eager), or one per segment between planned cuts (CUDA graphs);
- their *verdict source*: how a planned cut's activation becomes a verdict (a lookup inline, on a
  worker thread, on a remote predictor, or read back from a CUDA graph that already ran it);
- their *lookahead*: how many further steps may run before a verdict must be read. 0 waits for
  each verdict before going on (sync); 1 runs the next step while the lookup is in flight (async).

The rule: the answer is the **first hit in cut order**, else the full model's answer. A hit at the
cut after step k is read before step k + 1 + lookahead, so the request stops having run exactly
`steps[k + lookahead].stages_done` stages (capped at the last step).

A verdict that never arrives (a predictor down or late) is *missing*, and from there the full
model answers: no later cut is asked, and a later hit already asked for is not used. The answer
lists the missing cuts (`Answer.missing`: it is degraded). Why this rule: the thresholds were
certified for the whole cascade, each later cut on the requests the earlier ones missed. With cut
k missing, a request either exits before k exactly as the certified cascade would, or gets the
full model's answer, which always agrees; its wrong answers are a subset of the certified
cascade's on every request, so the certified agreement still holds. Letting a later cache answer
would send it the requests cut k would have taken, which no calibration looked at.

The calibration simulator (`gati.pipeline.certify`) replays the same rule vectorised over stored
scores; a test runs both on the same scores and checks they agree.

A *shadow* run (a sampled request whose answer must be checked against the full model) records
its answer at the first hit, reports it through `on_answer` at once, and goes on to the end.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from gati.errors import Cancelled


@dataclass(frozen=True)
class Verdict:
    """A cache's answer at one cut, and whether it is confident enough to be the request's answer."""
    cut: int
    label: int
    confidence: float
    hit: bool

    @classmethod
    def judge(cls, cut: int, label: int, confidence: float, threshold: float) -> "Verdict":
        """The threshold rule, written once: a lookup hits when its confidence reaches the threshold."""
        return cls(cut, int(label), float(confidence), float(confidence) >= threshold)


class Ticket(Protocol):
    """A lookup that was started; `verdict()` blocks until it is known (None: no verdict, a miss)."""
    def verdict(self) -> Verdict | None: ...


class VerdictSource(Protocol):
    """Starts the lookup of a planned cut's activation."""
    def ask(self, cut: int, act: Tensor) -> Ticket: ...


@dataclass(frozen=True)
class Done:
    """A ticket whose verdict is already known (inline lookups, CUDA graphs, failures)."""
    value: Verdict | None

    def verdict(self) -> Verdict | None:
        return self.value


@dataclass(frozen=True)
class Step:
    """One unit of work between two points where the loop may stop.

    `run` maps the previous step's output to this step's; after it, `stages_done` stages of the
    base model have run. `cut` is the planned cut whose activation `run` returns (its lookup is
    started right after), or None.
    """
    run: Callable[[Tensor], Tensor]
    stages_done: int
    cut: int | None = None
    cut_name: str = ""


@dataclass
class Answer:
    label: int
    confidence: float
    exit_cut: int | None   # the cut whose cache answered; None when the whole model answered
    exit_name: str         # the cut's name, or "final"
    stages_run: int        # stages run when the answer was decided
    compute_s: float = 0.0   # up to the answer: seconds in the steps
    wait_s: float = 0.0      # up to the answer: seconds waiting for verdicts (lookups, hops)
    missing: tuple[int, ...] = ()   # planned cuts whose verdict never came: the full model answered from there


@dataclass
class Trace:
    """Everything one pass of the loop did."""
    answer: Answer
    completed: bool                   # every step ran (a miss, or a shadow run)
    output: Tensor | None = None      # the last step's output when completed (the logits, eagerly)
    final: Answer | None = None       # the full model's own answer when completed
    verdicts: list[Verdict] = field(default_factory=list)  # the verdicts read, in cut order
    missing: list[int] = field(default_factory=list)       # cuts whose verdict never came, in cut order


Head = Callable[[Tensor], tuple[int, float]]   # the last step's output -> (label, confidence)


def run_cascade(x: Tensor, steps: Sequence[Step], source: VerdictSource, lookahead: int, head: Head, *,
                shadow: bool = False, stop: Callable[[], bool] | None = None,
                on_answer: Callable[[Answer], None] | None = None) -> Trace:
    """Run `steps` on `x` with early exit; `stop()` true before a step raises `Cancelled`."""
    if lookahead < 0:
        raise ValueError(f"lookahead must be >= 0, got {lookahead}")
    names = {s.cut: s.cut_name for s in steps if s.cut is not None}
    pending: deque[tuple[int, Ticket]] = deque()   # (step index, ticket), in cut order
    trace = Trace(answer=None, completed=False)    # type: ignore[arg-type]  # set before returning
    stages_done, compute_s, wait_s = 0, 0.0, 0.0

    def settle(upto: int) -> None:
        """Read the verdicts of steps <= upto; the first hit becomes the answer."""
        nonlocal wait_s
        while pending and pending[0][0] <= upto:
            start = time.perf_counter()
            k, ticket = pending.popleft()
            v = ticket.verdict()
            wait_s += time.perf_counter() - start
            if v is None:
                trace.missing.append(steps[k].cut)
                continue
            trace.verdicts.append(v)
            if v.hit and trace.answer is None and not trace.missing:
                trace.answer = Answer(v.label, v.confidence, v.cut, names[v.cut], stages_done, compute_s, wait_s)
                if on_answer is not None:
                    on_answer(trace.answer)

    for k, step in enumerate(steps):
        if stop is not None and stop():
            raise Cancelled(f"cancelled before step {k} ({stages_done} stages run)")
        settle(k - 1 - lookahead)
        if trace.answer is not None and not shadow:
            return trace
        start = time.perf_counter()
        x = step.run(x)
        if step.cut is not None and not trace.missing:  # after a missing verdict no cache may answer
            pending.append((k, source.ask(step.cut, x)))
        compute_s += time.perf_counter() - start   # a lookup started here counts as compute (sync: it ran here)
        stages_done = step.stages_done
    settle(len(steps))  # every verdict still out: a hit at a late cut still answers (cut order)
    label, confidence = head(x)
    trace.completed, trace.output = True, x
    trace.final = Answer(label, confidence, None, "final", stages_done, compute_s, wait_s, tuple(trace.missing))
    if trace.answer is None:
        trace.answer = trace.final
        if on_answer is not None:
            on_answer(trace.answer)
    return trace
