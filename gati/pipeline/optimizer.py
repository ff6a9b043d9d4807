"""The optimizer: which cuts get which cache, under a memory budget.

A plan's worth is its expected latency on the select part of the calibration images, simulated for
the whole cascade with thresholds from `calibrate.search_thresholds` at the target plus a margin
(the margin leaves room for the certification step that follows). Lookups are not free: a cache
that rarely hits adds its lookup cost to every request that reaches it, so the greedy search only
keeps caches that pay for themselves.

Search: start from no caches; each round tries adding any (cut, variant) pair at a free cut,
removing a chosen one, or swapping a chosen cut's variant, and keeps the best improvement.
`exhaustive` enumerates every assignment for small problems, to measure how far greedy lands.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from gati.bundle.layout import CacheKey
from gati.pipeline.certify import (
    Costs,
    Scores,
    exit_costs,
    max_wrong_for,
    search_thresholds,
    simulate,
)
from gati.runtime.plan import MODES


@dataclass
class Choice:
    keys: list[CacheKey]        # the chosen (cut, variant) pairs in cut order
    mode: str
    latency_ms: float      # expected, on the select part
    agreement: float
    hit_rate: float


@dataclass
class Problem:
    scores: dict[CacheKey, Scores]  # every fitted cache, scored on the select part
    costs: Costs
    nbytes: dict[CacheKey, int]
    target: float              # agreement to simulate (the user's target plus a margin)
    memory_bytes: float = float("inf")

    def evaluate(self, keys: list[CacheKey], mode: str) -> Choice:
        keys = sorted(keys)
        entries = [self.scores[k] for k in keys]
        cost = exit_costs(entries, self.costs, mode)
        n = len(next(iter(self.scores.values())).conf)
        thresholds = search_thresholds(entries, cost, max_wrong_for(self.target, n))
        if not entries:
            return Choice([], mode, float(cost[-1]), 1.0, 0.0)
        sim = simulate(entries, thresholds, cost)
        return Choice(keys, mode, sim["latency_ms"], sim["agreement"], sim["hit_rate"])

    def fits(self, keys: list[CacheKey]) -> bool:
        return sum(self.nbytes[k] for k in keys) <= self.memory_bytes


def greedy(problem: Problem, mode: str) -> Choice:
    best = problem.evaluate([], mode)
    while True:
        candidates = [c for c in _neighbours(best.keys, problem) if problem.fits(c)]
        scored = [problem.evaluate(c, mode) for c in candidates]
        better = min(scored, key=lambda c: c.latency_ms, default=None)
        if better is None or better.latency_ms >= best.latency_ms - 1e-6:
            return _drop_idle(best, problem)
        best = better


def _neighbours(keys: list[CacheKey], problem: Problem):
    used = {cut for cut, _ in keys}
    for key in problem.scores:
        if key[0] not in used:
            yield keys + [key]                                   # add
    for i, key in enumerate(keys):
        yield keys[:i] + keys[i + 1:]                            # remove
        for other in problem.scores:
            if other[0] == key[0] and other != key:
                yield keys[:i] + [other] + keys[i + 1:]          # swap variant


def _drop_idle(choice: Choice, problem: Problem) -> Choice:
    """A cache that never hits only costs lookups: remove it."""
    while choice.keys:
        entries = [problem.scores[k] for k in choice.keys]
        cost = exit_costs(entries, problem.costs, choice.mode)
        n = len(entries[0].conf)
        sim = simulate(entries, search_thresholds(entries, cost, max_wrong_for(problem.target, n)), cost)
        idle = [k for k, hits in zip(choice.keys, sim["hits"]) if hits == 0]
        if not idle:
            return choice
        choice = problem.evaluate([k for k in choice.keys if k not in idle], choice.mode)
    return choice


def optimize(problem: Problem, modes: tuple[str, ...] = MODES) -> Choice:
    """The best greedy plan over the engine's modes."""
    return min((greedy(problem, m) for m in modes), key=lambda c: c.latency_ms)


def exhaustive(problem: Problem, mode: str) -> Choice:
    """Every assignment of at most one variant per cut: exponential, for small problems only."""
    by_cut: dict[int, list[CacheKey]] = {}
    for key in problem.scores:
        by_cut.setdefault(key[0], []).append(key)
    options = [[None] + keys for keys in by_cut.values()]
    best = problem.evaluate([], mode)
    for combo in itertools.product(*options):
        keys = [k for k in combo if k is not None]
        if keys and problem.fits(keys):
            choice = problem.evaluate(keys, mode)
            if choice.latency_ms < best.latency_ms:
                best = choice
    return best
