"""Thresholds that keep the end-to-end agreement promise on unseen data.

The promised quantity is end-to-end agreement with the base model on new requests,
``A = 1 - wrong hits / requests``: a miss is always right (the base model answers) and a later
cache only sees the requests every earlier cache missed. Thresholds are therefore chosen for the
whole cascade at once, never layer by layer.

Two disjoint parts of the calibration images are used (see `split_select_certify`: a salted hash
that no design choice was tuned on decides which part an image falls in):

1. *select*: a greedy search lowers one cache's threshold at a time, always taking the move that
   saves the most expected latency per added wrong hit, while the simulated number of wrong hits
   stays within a budget that ramps up from zero to the target's. Every step of that one path is a
   threshold vector, so the sequence runs from conservative to aggressive and depends on the
   select part only.
2. *certify*: fixed-sequence testing (as in Learn-then-Test) walks that sequence in order on the
   other part and stops at the first vector whose one-sided Clopper-Pearson lower bound on A falls
   below the target. The last vector that passed is returned. Because the order was fixed before
   looking at the certify part, the test proves "agreement >= target" at level `1 - alpha` despite
   the many candidates; selecting the best vector on the same images would void it. What it proves
   is that claim; the Clopper-Pearson value at the chosen vector is a nominal estimate, no more.

Every certification spends part of one error budget per certify part (`ALPHA`): re-targeting,
re-planning and compacting look at the same images again, so look k tests at `look_alpha(k)`, and
the shares sum to ALPHA (a union bound over looks whose candidate sequences were built without the
certify part). The bundle keeps the ledger of looks.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from gati.bundle.layout import CacheKey
from gati.bundle.manifest import Profile
from gati.data import halves

ALPHA = 0.05  # the error budget of one certify part, spent over every look at it (look_alpha)
BUDGET_LEVELS = 16  # the greedy search's wrong-hit budget grows in this many steps (see greedy_path)
MOVES = (1, 4, 16)  # band sizes the greedy search tries, in n / 400 images; larger made jumps certification failed


@dataclass
class Scores:
    """One cache's answers on the calibration images, compared with the base model's."""
    cut: int
    variant: str
    conf: np.ndarray     # float [n] confidence of the cache's label
    correct: np.ndarray  # bool [n] cache label == base model label

    def subset(self, idx: np.ndarray) -> "Scores":
        return Scores(self.cut, self.variant, self.conf[idx], self.correct[idx])


@dataclass
class Costs:
    """Measured latencies (milliseconds) on the serving device, from gati.pipeline.profile."""
    stage_ms: list[float]                   # one per stage; the last stage is the head
    lookup_ms: dict[CacheKey, float]  # (cut, variant) -> what a lookup adds to the next stage (sync)
    # (cut, variant) -> what the lookup adds to the next stage when run beside it (async mode);
    # when not measured, the lookup's overrun of that stage
    overlap_ms: dict[CacheKey, float] = field(default_factory=dict)
    # what every request pays besides stages and lookups, wherever it exits: without it the model expected 2.5-4%
    # more speed-up than replays measured (docs/results.md, "The latency model against a quiet replay")
    request_ms: float = 0.0

    @classmethod
    def of(cls, profile: Profile, keys: Iterable[CacheKey]) -> "Costs":
        """A bundle profile's costs of the caches `keys` ((cut, variant) pairs)."""
        keys = list(keys)
        return cls(list(profile.stage_ms), {k: profile.lookup(*k) for k in keys},
                   {k: profile.overlap(*k) for k in keys if profile.overlap(*k) is not None}, profile.request_ms)


@dataclass
class Certified:
    thresholds: np.ndarray
    alpha: float         # this look's share of the error budget
    lower_bound: float   # one-sided Clopper-Pearson bound at the chosen vector (nominal: see the module doc)
    agreement: float     # measured on the certify part
    hit_rate: float      # measured on the certify part
    hit_rate_lower_bound: float  # one-sided Clopper-Pearson lower bound on the hit rate, at level 1 - alpha
    n: int               # size of the certify part
    wrong_hits: int
    tested: int          # how many vectors of the sequence were tested
    # every vector that passed, in sequence order (the last is `thresholds`): fixed-sequence testing
    # certifies all of them at once, at the same level
    passed: list[np.ndarray] = field(default_factory=list)
    sequence: list[np.ndarray] = field(default_factory=list)  # the whole sequence, tested or not (`passed` begins it)


def look_alpha(look: int, alpha: float = ALPHA) -> float:
    """The share of `alpha` that look number `look` (1, 2, ...) may spend: alpha * 6 / (pi^2 look^2),
    which sums to alpha over all looks (the first look gets 61% of it)."""
    if look < 1:
        raise ValueError(f"looks are numbered from 1, got {look}")
    return alpha * 6.0 / (math.pi ** 2 * look ** 2)


def exit_costs(entries: list[Scores], costs: Costs, mode: str) -> np.ndarray:
    """Latency of a request that exits at entry j (index m: a miss), under the plan's mode.

    sync: a lookup runs before the next stage, so exiting at cut c costs the stages up to c plus
    every lookup so far. async: the lookup at cut c overlaps stage c+1 and is checked after it, so
    a hit is only seen one stage later, and a lookup costs what it adds to that stage (measured:
    on a CPU whose cores the stage already uses, that can exceed the lookup itself). Every exit
    also pays the request's own cost (`Costs.request_ms`).
    """
    stage = np.asarray(costs.stage_ms, dtype=np.float64)
    cum = np.cumsum(stage) + costs.request_ms
    lookups = np.array([costs.lookup_ms[(e.cut, e.variant)] for e in entries])
    if mode == "sync":
        paid = np.cumsum(lookups)
        exits = [cum[e.cut] + paid[j] for j, e in enumerate(entries)]
        return np.array(exits + [cum[-1] + (paid[-1] if len(entries) else 0.0)])
    overrun = np.array([costs.overlap_ms.get((e.cut, e.variant), max(0.0, lookups[j] - stage[e.cut + 1]))
                        for j, e in enumerate(entries)])
    waited = np.cumsum(overrun)
    exits = [cum[e.cut + 1] + waited[j] for j, e in enumerate(entries)]
    return np.array(exits + [cum[-1] + (waited[-1] if len(entries) else 0.0)])


def simulate(entries: list[Scores], thresholds: np.ndarray, exit_cost: np.ndarray) -> dict:
    """Replay the cascade on the scored images: expected latency, agreement, hit rate."""
    n = len(entries[0].conf) if entries else 0
    exit_at = exit_index(entries, thresholds)
    wrong = _wrong_at(entries, exit_at)
    return {"latency_ms": float(exit_cost[exit_at].mean()) if n else float(exit_cost[-1]),
            "agreement": 1.0 - wrong.mean() if n else 1.0,
            "hit_rate": float((exit_at < len(entries)).mean()) if n else 0.0,
            "wrong": int(wrong.sum()), "n": n,
            "hits": [int((exit_at == j).sum()) for j in range(len(entries))]}


def exit_index(entries: list[Scores], thresholds: np.ndarray) -> np.ndarray:
    """Per scored image, the index of the entry that answers it (len(entries): the full model).

    `gati.runtime.cascade.run_cascade`'s rule (the first hit in cut order), vectorised over stored
    scores; tests/test_cascade.py checks that the two agree.
    """
    n = len(entries[0].conf) if entries else 0
    exit_at = np.full(n, len(entries))
    for j in reversed(range(len(entries))):  # reversed: the earliest hit wins
        exit_at[entries[j].conf >= thresholds[j]] = j
    return exit_at


def _wrong_at(entries: list[Scores], exit_at: np.ndarray) -> np.ndarray:
    wrong = np.zeros(len(exit_at), dtype=bool)
    for j, e in enumerate(entries):
        here = exit_at == j
        wrong[here] = ~e.correct[here]
    return wrong


def search_thresholds(entries: list[Scores], exit_cost: np.ndarray, max_wrong: int) -> np.ndarray:
    """Greedy cascade search from 'no hits' (all thresholds infinite); the end of `greedy_path`."""
    return greedy_path(entries, exit_cost, max_wrong)[-1][1]


def greedy_path(entries: list[Scores], exit_cost: np.ndarray, max_wrong: int, levels: int = BUDGET_LEVELS,
                moves: tuple[int, ...] = MOVES, start: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """Every step of the greedy search, as (wrong hits so far, thresholds), from 'no hits' on.

    Each step lowers one threshold so that a band of the next most confident images becomes hits,
    taking the move with the largest latency saving per added wrong hit that keeps the total
    number of wrong hits within the current budget. The budget ramps up in `levels` equal steps
    from 0 to `max_wrong`, and each level runs until no move fits: error-free moves at every cut are
    exhausted before any error is spent. With the whole budget at once, the search spent errors
    early on one big band (a ResNet-50 cut-1 band cost 7 wrong hits on select and 14 on certify),
    so certification stopped there and never reached the free moves behind it; and once the budget
    was gone it could be stuck far from what a smaller budget reached (85% against 94% hits).
    The path is nested (thresholds only ever go down), which is what fixed-sequence testing wants.
    `moves`: band sizes tried, in units of n / 400 images (at least one). `start`: a vector to go on from
    instead of 'no hits' (the path's first element; later ones are never above it).
    """
    m = len(entries)
    if m == 0:
        return [(0, np.zeros(0))]
    n = len(entries[0].conf)
    order = [np.argsort(-e.conf, kind="stable") for e in entries]
    correct = np.stack([e.correct for e in entries] + [np.ones(n, dtype=bool)])  # row m: misses
    ceiling = np.full(m, np.inf) if start is None else np.asarray(start, dtype=np.float64)
    taken = np.array([int((e.conf >= t).sum()) for e, t in zip(entries, ceiling)])
    exit_at = exit_index(entries, ceiling)
    wrong = int((~correct[exit_at, np.arange(n)]).sum())
    step = max(1, n // 400)

    def thresholds() -> np.ndarray:
        return np.minimum(ceiling, _thresholds(entries, order, taken))

    path = [(wrong, thresholds())]
    budgets = np.linspace(0, max_wrong, levels) if levels > 1 else [max_wrong]  # levels=1: all at once
    for budget in np.unique(np.round(budgets).astype(int)):
        while True:
            best = _best_move(order, taken, exit_at, correct, exit_cost, int(budget) - wrong,
                              [size * step for size in moves])
            if best is None:
                break
            j, size, moved, added_wrong = best
            taken[j] += size
            exit_at[moved] = j
            wrong += added_wrong
            path.append((wrong, thresholds()))
    return path


def _thresholds(entries: list[Scores], order: list[np.ndarray], taken: np.ndarray) -> np.ndarray:
    return np.array([entries[j].conf[order[j][taken[j] - 1]] if taken[j] else np.inf
                     for j in range(len(entries))])


def _best_move(order, taken, exit_at, correct, exit_cost, wrong_left, sizes):
    best, best_ratio = None, 0.0
    for j in range(len(order)):
        for size in sizes:
            band = order[j][taken[j]:taken[j] + size]
            if len(band) == 0:
                break
            moved = band[exit_at[band] > j]
            saving = float((exit_cost[exit_at[moved]] - exit_cost[j]).sum())
            added = int((~correct[j, moved]).sum() - (~correct[exit_at[moved], moved]).sum())
            if saving <= 0 or added > wrong_left:
                continue
            ratio = saving / max(added, 0.25)  # a free move (no added error) ranks first
            if ratio > best_ratio:
                best, best_ratio = (j, len(band), moved, added), ratio
    return best


def max_wrong_for(target: float, n: int) -> int:
    return int(math.floor((1.0 - target) * n + 1e-9))


@functools.lru_cache(maxsize=65536)  # pure, and asked for the same (n, wrong, alpha) over and over
def agreement_lower_bound(n: int, wrong: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper-Pearson lower bound on agreement after `wrong` errors in `n` requests.

    The upper bound on the error rate is the p at which seeing `wrong` or fewer errors has
    probability alpha; found by bisection on the exact binomial CDF.
    """
    if n == 0:
        return 0.0
    if wrong >= n:
        return 0.0
    lo, hi = wrong / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binom_cdf(wrong, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return 1.0 - hi


def agreement_upper_bound(n: int, wrong: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper-Pearson upper bound on agreement after `wrong` errors in `n` requests: the lower bound
    on the error rate, by the same test with right and wrong swapped."""
    if n == 0:
        return 1.0
    return 1.0 - agreement_lower_bound(n, n - wrong, alpha)


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0 if k < n else 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs)


def threshold_sequence(entries: list[Scores], exit_cost: np.ndarray, target: float,
                       moves: tuple[int, ...] = MOVES) -> list[np.ndarray]:
    """Every vector along one greedy path on the select part, from no hits to the target there.

    One nested path (rather than independent searches per margin) makes each vector more aggressive
    than the one before, so the fixed-sequence test does not stop early on a vector that happens
    to be an outlier of its own search. Every step is kept: fixed-sequence testing pays nothing
    for a longer sequence, while skipping steps lets one test jump over the last vector that passes.
    """
    n = len(entries[0].conf) if entries else 0
    path = greedy_path(entries, exit_cost, max_wrong_for(target, n), moves=moves)
    return [thresholds for _, thresholds in path[1:]]  # path[0] is 'no hits', certify's fallback


def certify(entries: list[Scores], sequence: list[np.ndarray], target: float,
            alpha: float = ALPHA) -> Certified:
    """Fixed-sequence test on the certify part; falls back to no hits if the first vector fails."""
    n = len(entries[0].conf) if entries else 0
    passed: list[np.ndarray] = []
    last = (np.full(len(entries), np.inf), 0, 0, agreement_lower_bound(n, 0, alpha))  # thresholds, wrong, hits, bound
    tested = 0
    for tested, thresholds in enumerate(sequence, start=1):
        exit_at = exit_index(entries, thresholds)
        wrong = int(_wrong_at(entries, exit_at).sum())
        bound = agreement_lower_bound(n, wrong, alpha)
        if bound < target:
            break
        passed.append(thresholds)
        last = (thresholds, wrong, int((exit_at < len(entries)).sum()), bound)
    thresholds, wrong, hits, bound = last
    # the hit rate's bound only at the chosen vector: each one costs an exact binomial sum over the misses
    hit_bound = agreement_lower_bound(n, n - hits, alpha) if hits else 0.0
    return Certified(thresholds, alpha, bound, 1.0 - wrong / n if n else 1.0, hits / n if n else 0.0, hit_bound,
                     n, wrong, tested, passed, list(sequence))


# Chosen once, when the procedure (budget levels, move sizes, training-set size) was frozen: none of
# those choices ever saw the certify part this salt defines.
CERTIFY_SALT = "gati-certify-v2"
SELECT_CERTIFY_RULE = (f"within each class, ids ordered by SHA-256('{CERTIFY_SALT}' + id): even positions "
                       "select thresholds, odd positions certify them")


def split_select_certify(labels: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The calibration images halved, class by class, in the order a salted hash of their ids gives
    (the project's splitting rule, `gati.data.halves`, applied to that order)."""
    order = np.argsort([hashlib.sha256((CERTIFY_SALT + i).encode()).hexdigest() for i in ids], kind="stable")
    first, second = halves(np.asarray(labels)[order])
    return np.sort(order[first]), np.sort(order[second])


def calibrate(entries: list[Scores], costs: Costs, mode: str, target: float,
              select: np.ndarray, cert: np.ndarray, alpha: float = ALPHA) -> tuple[list[float], Certified]:
    """Thresholds for a fixed set of plan entries: selected on `select`, certified on `cert` at `alpha`."""
    exit_cost = exit_costs(entries, costs, mode)
    sequence = threshold_sequence([e.subset(select) for e in entries], exit_cost, target)
    result = certify([e.subset(cert) for e in entries], sequence, target, alpha)
    return [float(t) for t in result.thresholds], result
