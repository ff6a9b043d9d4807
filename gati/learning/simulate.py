"""Simulated serving, to check the live-agreement bound and the fallback rule without a model.

Each error scenario gives many independent runs at once (runs x requests boolean arrays): which requests were
hits, which hits were wrong (the answer differed from the base model's) and which the server's coin sampled.
`miscoverage` is the share of runs in which the true count of wrong answers ever left a bound (above the upper,
below the lower): for an anytime-valid bound at level alpha each share must stay at or below alpha, whatever the
scenario. `serve_with_fallback`
runs the `FallbackController` through an injected error burst, one request at a time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from gati.learning.guarantee import ALPHA, HEADROOM, FallbackController, LiveAgreement, wrong_bounds

# (sampled wrong D_t, unsampled hits) -> (lower, upper) bounds on the wrong answers W_t
Bounds = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Served:
    """Simulated runs: bool arrays runs x requests."""

    hits: np.ndarray
    wrong: np.ndarray  # a subset of hits
    sampled: np.ndarray  # the coin; meaningful for hits only

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Running (sampled wrong D_t, unsampled hits, wrong answers W_t) per run and request."""
        seen_wrong = np.cumsum(self.sampled & self.wrong, axis=1)
        unsampled = np.cumsum(self.hits & ~self.sampled, axis=1)
        return seen_wrong, unsampled, np.cumsum(self.wrong, axis=1)


def miscoverage(served: Served, bounds: Bounds) -> tuple[float, float]:
    """Shares of runs in which the true number of wrong answers was, at some request, above the upper bound / below
    the lower bound."""
    seen_wrong, unsampled, wrong = served.counts()
    lower, upper = bounds(seen_wrong, unsampled)
    return float((upper < wrong).any(axis=1).mean()), float((lower > wrong).any(axis=1).mean())


def fixed_time_bounds(p: float, alpha: float = 0.05) -> Bounds:
    """For comparison: the exact binomial upper bound, valid at any one request fixed in advance but not at all
    requests at once (the lower bound is the trivial D_t). `miscoverage` shows it failing far more often than alpha."""
    def bounds(seen_wrong: np.ndarray, unsampled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, inverse = np.unique(seen_wrong, return_inverse=True)
        upper = np.array([_binomial_upper(int(d), p, alpha) for d in values])[inverse].reshape(seen_wrong.shape)
        return seen_wrong, np.minimum(upper, seen_wrong + unsampled)
    return bounds


@functools.lru_cache(maxsize=4096)
def _binomial_upper(seen_wrong: int, p: float, alpha: float) -> int:
    """The largest W with P(Binomial(W, p) <= seen_wrong) > alpha."""
    w = seen_wrong
    while True:
        n = w + 1
        cdf = sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                           + k * math.log(p) + (n - k) * math.log(1 - p)) for k in range(seen_wrong + 1))
        if cdf <= alpha:
            return w
        w = n


def iid_errors(rng: np.random.Generator, runs: int, n: int, p: float, hit_rate: float = 0.8,
               error: float = 0.03) -> Served:
    """Every hit wrong independently with probability `error`."""
    hits = rng.random((runs, n)) < hit_rate
    return Served(hits, hits & (rng.random((runs, n)) < error), rng.random((runs, n)) < p)


def bursty_errors(rng: np.random.Generator, runs: int, n: int, p: float, hit_rate: float = 0.8,
                  calm: float = 0.005, burst: float = 0.6, mean_gap: float = 1000.0,
                  mean_burst: float = 100.0) -> Served:
    """Calm stretches (hits wrong with probability `calm`) broken by bursts (`burst`), both of geometric length."""
    hits = rng.random((runs, n)) < hit_rate
    switch, draw = rng.random((runs, n)), rng.random((runs, n))
    in_burst = np.zeros(runs, dtype=bool)
    wrong = np.zeros((runs, n), dtype=bool)
    for t in range(n):
        in_burst = np.where(in_burst, switch[:, t] >= 1.0 / mean_burst, switch[:, t] < 1.0 / mean_gap)
        wrong[:, t] = hits[:, t] & (draw[:, t] < np.where(in_burst, burst, calm))
    return Served(hits, wrong, rng.random((runs, n)) < p)


def drifting_errors(rng: np.random.Generator, runs: int, n: int, p: float, hit_rate: float = 0.8,
                    final_error: float = 0.15) -> Served:
    """The share of wrong hits rising linearly from 0 to `final_error` over the run."""
    hits = rng.random((runs, n)) < hit_rate
    return Served(hits, hits & (rng.random((runs, n)) < np.linspace(0.0, final_error, n)), rng.random((runs, n)) < p)


def adversarial_errors(rng: np.random.Generator, runs: int, n: int, p: float, alpha: float = 0.05,
                       hit_rate: float = 0.8, gap: float = 0.05) -> Served:
    """An adversary who watches the exported bound and makes every hit wrong while the bound is within `gap` of the
    true running agreement, i.e. exactly when few of its wrong answers were sampled. It never sees the coins."""
    hits, sampled = rng.random((runs, n)) < hit_rate, rng.random((runs, n)) < p
    wrong = np.zeros((runs, n), dtype=bool)
    seen_wrong, unsampled, total_wrong = (np.zeros(runs, dtype=np.int64) for _ in range(3))
    bound = np.zeros(runs)
    for t in range(n):
        agreement = 1.0 - total_wrong / max(t, 1)
        wrong[:, t] = hits[:, t] & (agreement - bound < gap)
        total_wrong += wrong[:, t]
        seen_wrong += sampled[:, t] & wrong[:, t]
        unsampled += hits[:, t] & ~sampled[:, t]
        bound = 1.0 - wrong_bounds(seen_wrong, unsampled, p, alpha)[1] / (t + 1)
    return Served(hits, wrong, sampled)


def serve_with_fallback(seed: int, n: int, onset: int, hit_rate: Sequence[float], error_before: Sequence[float],
                        error_after: Sequence[float], p: float, target: float, alpha: float = ALPHA,
                        step: int = 1, headroom: int = HEADROOM) -> FallbackController:
    """Serve `n` requests with a controller over len(hit_rate) vectors (index 0: no early exits, hit rate 0).

    The vector served decides a request's hit rate and the share of its hits that are wrong: `error_before`
    before request `onset`, `error_after` from then on (an error burst or a drift the caches have not learned).
    """
    rng = np.random.default_rng(seed)
    controller = FallbackController(LiveAgreement(p, alpha), target, len(hit_rate), step=step, headroom=headroom)
    for t in range(n):
        index = controller.index
        hit = bool(rng.random() < hit_rate[index])
        wrong = hit and bool(rng.random() < (error_after if t >= onset else error_before)[index])
        sampled = hit and controller.live.draw_coin(rng)
        controller.observe(hit, sampled, wrong if sampled else None)
    return controller
