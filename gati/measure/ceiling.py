"""How far any near-duplicate tier can go on a stream: the base model's own answers set the ceiling.

A neighbour tier answers a request with the base model's answers to earlier requests like it. Even a tier that
recognised every request's *source image* without fail (which a nearest-neighbour search in activation space
only approximates) cannot answer a request right when the base model itself answers that copy differently from
the earlier ones: on jittered near-duplicates of an image near a class border, the base answer flips from copy to
copy. Two such idealised tiers bound what the real one can reach, given the stream's sources and base answers:

- `last_k_reach`: causal, as a tier serves. It answers a request when the last `k` copies of its source all got
  the same base answer, with that answer (the rule "k close neighbours agree", with perfect neighbours).
- `clairvoyant_reach`: knows every source's whole answer history in advance and answers the requests of the
  sources it picks with their most common answer (every request but a source's first, which has nothing stored
  to be answered with), the purest sources first, until the wrong answers reach a budget (of the last source,
  the share of its requests the budget allows). It is an upper bound for every rule that cannot tell one copy of
  a source from another, randomised ones included: such a rule answering a share of a source's copies gets, at
  best, that share of its off-mode copies wrong, so answering within the budget is a fractional knapsack, and
  taking the most answers per wrong answer first solves it exactly.

`speedup_bound` turns an answered share into the mean-latency speed-up a cascade reaches when the tier's answers
cost `tier_cost` and everything else `miss_cost` (both as fractions of the unsplit model's mean).
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass

import numpy as np

from gati.errors import WorkloadError


@dataclass(frozen=True)
class Reach:
    """What an idealised tier answers on a stream, as shares of all its requests."""

    rule: str
    answered: float
    wrong: float


def last_k_reach(sources: np.ndarray, base_labels: np.ndarray, k: int) -> Reach:
    """A perfect-recognition tier that answers when the last `k` copies of the request's source agreed."""
    sources, labels = _check(sources, base_labels)
    if not isinstance(k, int) or k < 1:
        raise WorkloadError(f"k must be an integer >= 1, got {k!r}")
    history: dict[int, deque] = defaultdict(lambda: deque(maxlen=k))
    answered = wrong = 0
    for source, label in zip(sources.tolist(), labels.tolist()):
        seen = history[source]
        if len(seen) == k and len(set(seen)) == 1:
            answered += 1
            wrong += seen[0] != label
        seen.append(label)
    return Reach(f"last {k} copies agree", answered / len(labels), wrong / len(labels))


def clairvoyant_reach(sources: np.ndarray, base_labels: np.ndarray, budget: float) -> Reach:
    """The most a per-source rule answers with at most `budget` (a share of all requests) wrong."""
    sources, labels = _check(sources, base_labels)
    if not 0.0 <= budget <= 1.0:
        raise WorkloadError(f"budget must be in [0, 1], got {budget!r}")
    per_source: dict[int, Counter] = defaultdict(Counter)
    seen: set[int] = set()
    for source, label in zip(sources.tolist(), labels.tolist()):
        if source in seen:  # a source's first request has nothing stored to answer it with
            per_source[source][label] += 1
        seen.add(source)
    # (requests, wrong if answered with the modal answer), purest first; equal purity: the larger first
    groups = sorted(((sum(c.values()), sum(c.values()) - max(c.values())) for c in per_source.values()),
                    key=lambda g: (g[1] / g[0], -g[0]))
    allowed = budget * len(labels)
    answered = wrong = 0.0
    for size, errors in groups:
        share = 1.0 if wrong + errors <= allowed else (allowed - wrong) / errors
        answered += share * size
        wrong += share * errors
        if share < 1.0:
            break
    return Reach(f"clairvoyant, wrong <= {budget:.2%}", answered / len(labels), wrong / len(labels))


def speedup_bound(answered: float, tier_cost: float, miss_cost: float = 1.0) -> float:
    """Mean-latency speed-up when `answered` of the requests cost `tier_cost` and the rest `miss_cost`."""
    if not 0.0 <= answered <= 1.0:
        raise WorkloadError(f"answered must be in [0, 1], got {answered!r}")
    if tier_cost <= 0 or miss_cost <= 0:
        raise WorkloadError(f"costs must be positive, got tier {tier_cost!r}, miss {miss_cost!r}")
    return 1.0 / (answered * tier_cost + (1.0 - answered) * miss_cost)


def _check(sources: np.ndarray, base_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sources, labels = np.asarray(sources), np.asarray(base_labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise WorkloadError(f"base_labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if sources.shape != labels.shape or not np.issubdtype(sources.dtype, np.integer):
        raise WorkloadError(f"sources must be integers shaped like base_labels {labels.shape}, got "
                            f"{sources.dtype} {sources.shape}")
    return sources, labels
