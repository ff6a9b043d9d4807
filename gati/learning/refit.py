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

`review`: the decision whether a new version goes live, on *fresh* coin samples neither fitted on nor used to build
any threshold sequence. Two fixed-sequence tests at the target, each at alpha / 2, so that both certificates hold
together at 1 - alpha; each covers the whole cascade, tier and caches together, end to end, and certifies every
vector of its sequence before the first that fails:

- *retune*: the serving caches, with the sequence made of the serving version's certified levels (conservative
  first) and then the greedy path on `select` (held-out coin samples from before the fit) going on from the last
  of them, lowering thresholds further, the tier's included. Its first part re-tests the serving version on
  today's traffic (how far up its ladder it may serve: what lets a fallback climb back without new caches); the
  rest finds the early exits the traffic now allows (a tier certified for the first time, typically).
- *refit* (when there are new caches): the greedy path on `select` from no early exits, one sample's band per
  step (a few hundred live samples are too few for the build's coarser bands: one band made the first vector
  fail).

The faster of the two (expected latency on `fresh`: the planner's latency model with the bundle's measured
costs) becomes the next version when it certified a vector with early exits beyond the serving version's and is
faster than the serving version at the level it serves now (which the live bound watches: a few hundred fresh
samples certify less than a bundle's thousands, so a version serving well must not be replaced by a slower one
merely because its own top level could not be re-certified on them). Latency rather than hit rate: it weighs
where a request exits, and a version that keeps agreement by never hitting has the latency of the base model,
so it never wins. A candidate that fails certification, or is slower, is never deployed.
"""
from __future__ import annotations

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
    greedy_path,
    max_wrong_for,
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
class Trial:
    """One sequence tested on the fresh samples."""

    name: str  # RETUNE (the serving caches, thresholds going on) or REFIT (new caches)
    caches: dict[int, Cache]
    result: Certified
    expected_ms: float  # at its last certified vector (no early exits when none passed)


RETUNE, REFIT = "retune", "refit"


@dataclass
class Review:
    """What one re-certification found and decided."""

    trials: list[Trial]
    incumbent_levels_passed: int  # how many of the serving version's levels passed (its ladder is 1-based)
    incumbent_ms: float  # expected latency at the level it serves, on the fresh samples
    base_ms: float  # a request that never exits early
    deployed: Trial | None
    reason: str
    levels: list[list[float]]  # the deployed trial's certified levels (a spread of its passed vectors)
    alpha: float  # each test's share (alpha / 2)
    incumbent_wrong: int = 0  # wrong answers of the serving version, at the level it serves, on the fresh samples
    fresh: int = 0  # how many fresh samples the review tested on


def review(slots: list[Slot], incumbent: tuple[dict[int, Cache], list[list[float]]],
           candidate: dict[int, Cache] | None, select: SampleSet, fresh: SampleSet, costs: Costs, target: float,
           alpha: float, retune: bool = True, serving: int | None = None) -> Review:
    """Test the serving version (going on from its levels when `retune`) and the refitted `candidate` (if any) on
    `fresh`, and decide (see the module docstring). `serving`: the rung served now (default: the top)."""
    if not 0.0 < target < 1.0 or not 0.0 < alpha < 1.0:
        raise GatiError(f"target and alpha must be in (0, 1), got {target} and {alpha}")
    if len(fresh) == 0:
        raise GatiError("re-certification needs fresh samples")
    each = alpha / 2
    caches, levels = incumbent
    exit_cost = slot_costs(slots, costs)
    ladder = [np.asarray(v, dtype=np.float64) for v in levels]
    sequence = list(ladder)
    if retune and len(select):
        top = ladder[-1] if ladder else np.full(len(slots), np.inf)
        path = greedy_path(slot_scores(slots, caches, select), exit_cost, max_wrong_for(target, len(select)),
                           moves=(1,), start=top)
        sequence += [v for _, v in path[1:]]
    trials = [_trial(RETUNE, slots, caches, sequence, fresh, exit_cost, target, each)]
    passed = min(len(trials[0].result.passed), len(ladder))
    rung = len(ladder) if serving is None else serving
    old_vector = ladder[rung - 1] if rung else np.full(len(slots), np.inf)
    old = simulate(slot_scores(slots, caches, fresh), old_vector, exit_cost)
    old_ms = old["latency_ms"]
    if candidate is not None:
        fresh_path = threshold_sequence(slot_scores(slots, candidate, select), exit_cost, target, moves=(1,))
        trials.append(_trial(REFIT, slots, candidate, fresh_path, fresh, exit_cost, target, each))
    beyond = [t for t in trials if t.result.hit_rate > 0
              and len(t.result.passed) > (passed if t.name == RETUNE else 0)]
    best = min(beyond, key=lambda t: t.expected_ms, default=None)
    if best is None:
        deployed, reason = None, "no trial certified early exits beyond the serving version's"
    elif best.expected_ms >= old_ms:
        deployed, reason = None, (f"the best trial ({best.name}, {best.expected_ms:.3f} ms expected) is no faster "
                                  f"than the serving version at the level it serves ({old_ms:.3f} ms)")
    else:
        deployed, reason = best, (f"{best.name} certified, {best.expected_ms:.3f} ms expected against the serving "
                                  f"version's {old_ms:.3f} ms")
    spread = [] if deployed is None else [[float(t) for t in v] for v in spread_levels(deployed.result.passed)]
    return Review(trials, passed, old_ms, float(exit_cost[-1]), deployed, reason, spread, each, old["wrong"],
                  len(fresh))


def _trial(name: str, slots: list[Slot], caches: dict[int, Cache], sequence: list[np.ndarray], fresh: SampleSet,
           exit_cost: np.ndarray, target: float, alpha: float) -> Trial:
    scores = slot_scores(slots, caches, fresh)
    result = certify(scores, sequence, target, alpha)
    return Trial(name, caches, result, simulate(scores, result.thresholds, exit_cost)["latency_ms"])


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
