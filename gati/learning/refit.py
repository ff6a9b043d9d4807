"""Refit the caches on recent traffic and re-certify the whole cascade: pure functions over samples.

Nothing here holds an engine, a thread or a file: the in-process learner (`gati.learning.online`) calls these,
and a retrainer service can call the same ones on the samples it receives.

The served cascade is a list of *slots* in the order a request meets them: the neighbour tier at its cut, and
each plan cache at its cut (the tier first where they share a cut). A threshold vector has one threshold per slot;
a slot with an infinite threshold never answers. The calibration machinery of `gati.pipeline.certify` applies
unchanged once every slot has `Scores` (confidence, and whether its label equals the base model's) on a set of
samples: caches are scored from the samples' stored features, the tier by the verdict it gave when each request
was served (it changes with every request, so it cannot be replayed).

`refit_caches`: a fresh copy of each cache (same variant, input shape and hyper-parameters), fitted by distillation
on the samples' features and base logits.

`review`: the decision whether a candidate goes live, on *fresh* coin samples neither fitted on nor used to build
the candidate's threshold sequence. Two tests, each at alpha / 2, so that both certificates hold together at
1 - alpha:

- the candidate: its greedy threshold path is built on `select` (held-out coin samples from before the fit),
  then the fixed-sequence test walks it on `fresh` at the target: the whole cascade, tier and caches together,
  end to end; every vector before the first failure is certified;
- the incumbent: its certified levels, conservative first, tested the same way on the same `fresh` samples:
  how far up its ladder it may serve on today's traffic (what lets a fallback return without a new version).

The candidate is deployed only when it certified a vector with early exits *and* that vector's expected latency
on `fresh` (the latency model of the planner, with the bundle's measured costs) is no higher than that of the
incumbent's highest level that passed. Latency rather than hit rate: it weighs where a request exits, and a
version that keeps agreement by never hitting has the latency of the base model, so it never wins.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gati.bundle.manifest import Certificate
from gati.cache import Cache, make_cache
from gati.errors import GatiError
from gati.learning.neighbours import TIER
from gati.learning.samples import SampleSet
from gati.pipeline.certify import (
    Certified,
    Costs,
    Scores,
    certify,
    exit_costs,
    simulate,
    threshold_sequence,
)
from gati.pipeline.planner import floored, spread_levels

METHOD = ("fixed-sequence test over a greedy threshold path built on held-out live samples, one-sided "
          "Clopper-Pearson on fresh live samples sampled by the server's coin")


@dataclass(frozen=True)
class Slot:
    """One place of the cascade that can answer: the tier or a cache, at a cut."""

    cut: int
    name: str  # TIER, or the cache's variant


def order_slots(slots: list[Slot]) -> list[Slot]:
    """Cut order; at one cut the tier before the cache (it is asked first)."""
    return sorted(slots, key=lambda s: (s.cut, s.name != TIER))


def slot_scores(slots: list[Slot], caches: dict[int, Cache], samples: SampleSet) -> list[Scores]:
    """Every slot's answers on `samples`, compared with the base model's."""
    base = samples.labels
    scores = []
    for slot in slots:
        if slot.name == TIER:
            label, conf = samples.tier_label, samples.tier_confidence
        else:
            label, conf = _predict(caches[slot.cut], samples.features[slot.cut])
        scores.append(Scores(slot.cut, slot.name, np.asarray(conf, np.float32), np.asarray(label) == base))
    return scores


def slot_costs(slots: list[Slot], costs: Costs) -> np.ndarray:
    """The latency model's cost of a request that exits at each slot (the last entry: a miss), lookups inline."""
    return exit_costs([Scores(s.cut, s.name, np.zeros(0), np.zeros(0, bool)) for s in slots], costs, "sync")


def _predict(cache: Cache, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(flat) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    feats = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).reshape(len(flat), *cache.feat_shape)
    labels, conf = cache.predict(feats)
    return labels.numpy(), conf.numpy()


def refit_caches(configs: dict[int, dict[str, Any]], fit: SampleSet, seed: int = 0) -> dict[int, Cache]:
    """A fresh cache per cut, of the configuration given (`Cache.config()`), fitted on `fit` by distillation."""
    if len(fit) < 2:
        raise GatiError(f"refitting needs at least 2 samples, got {len(fit)}")
    teacher = torch.from_numpy(np.ascontiguousarray(fit.logits, dtype=np.float32))
    caches = {}
    for cut, config in configs.items():
        cache = make_cache(**config)
        feats = torch.from_numpy(fit.features[cut].astype(np.float32)).reshape(len(fit), *cache.feat_shape)
        cache.fit(feats, teacher, seed=seed)
        caches[cut] = cache
    return caches


@dataclass
class Review:
    """What one re-certification found and decided."""

    candidate: Certified | None  # None: no candidate (only the incumbent was re-tested)
    incumbent: Certified
    incumbent_levels_passed: int  # how many of the incumbent's levels passed (its ladder is 1-based)
    candidate_ms: float  # expected latency at the candidate's certified vector, on the fresh samples
    incumbent_ms: float  # the same at the incumbent's highest level that passed
    base_ms: float  # with no early exit
    deploy: bool
    reason: str
    levels: list[list[float]]  # the candidate's certified levels (a spread of its passed vectors)
    alpha: float  # each test's share (alpha / 2)


def review(slots: list[Slot], incumbent: tuple[dict[int, Cache], list[list[float]]],
           candidate: dict[int, Cache] | None, select: SampleSet, fresh: SampleSet, costs: Costs, target: float,
           alpha: float) -> Review:
    """Certify the candidate (if any) and re-test the incumbent on `fresh`; decide (see the module docstring)."""
    if not 0.0 < target < 1.0 or not 0.0 < alpha < 1.0:
        raise GatiError(f"target and alpha must be in (0, 1), got {target} and {alpha}")
    if len(fresh) == 0:
        raise GatiError("re-certification needs fresh samples")
    each = alpha / 2
    caches, levels = incumbent
    exit_cost = slot_costs(slots, costs)
    base_ms = float(exit_cost[-1])
    old_scores = slot_scores(slots, caches, fresh)
    old = certify(old_scores, [np.asarray(v, dtype=np.float64) for v in levels], target, each)
    old_ms = simulate(old_scores, old.thresholds, exit_cost)["latency_ms"]
    if candidate is None:
        return Review(None, old, len(old.passed), math.inf, old_ms, base_ms, False, "no candidate", [], each)
    sequence = threshold_sequence(slot_scores(slots, candidate, select), exit_cost, target)
    new_scores = slot_scores(slots, candidate, fresh)
    new = certify(new_scores, sequence, target, each)
    new_ms = simulate(new_scores, new.thresholds, exit_cost)["latency_ms"]
    if not new.passed or new.hit_rate == 0.0:
        deploy, reason = False, "the candidate certified no vector with early exits"
    elif new_ms > old_ms:
        deploy, reason = False, (f"the candidate is slower ({new_ms:.3f} ms expected) than the incumbent at its "
                                 f"highest passing level ({old_ms:.3f} ms)")
    else:
        deploy, reason = True, f"certified, {new_ms:.3f} ms expected against the incumbent's {old_ms:.3f} ms"
    spread = [[float(t) for t in v] for v in spread_levels(new.passed)]
    return Review(new, old, len(old.passed), new_ms, old_ms, base_ms, deploy, reason, spread, each)


def certificate(result: Certified, target: float, fresh: SampleSet, select_n: int, look: int) -> Certificate:
    """What a review proved about a version, in the bundle's certificate terms."""
    passed = bool(result.passed)
    claim = (f"agreement with the base model >= {target}" if passed
             else "no early exits: every answer is the base model's (agreement 1 by construction)")
    population = (f"requests like those sampled by the server's coin between request {int(fresh.requests.min())} "
                  f"and {int(fresh.requests.max())} ({len(fresh)} samples), answered by this version's caches and "
                  "the neighbour tier as it evolves")
    return Certificate(
        claim=claim, target=float(target), confidence=1.0 - result.alpha, alpha=result.alpha, look=look,
        method=METHOD, population=population, scored_on="live features", caches_sha256="",
        nominal_lower_bound=floored(result.lower_bound), agreement=floored(result.agreement),
        hit_rate=floored(result.hit_rate), hit_rate_lower_bound=floored(result.hit_rate_lower_bound), n=result.n,
        wrong_hits=result.wrong_hits, vectors_tested=result.tested, select_n=select_n, select_margin=0.0)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
