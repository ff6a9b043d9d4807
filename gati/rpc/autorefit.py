"""The retrainer's automatic refits: the cluster's caches refitted on live traffic, deployed only after the whole
cascade is re-certified on samples they were not fitted on.

Every request the aggregator's coin sampled (secret, independent of its content) ran to the end on an executor,
and arrives as one `add_samples` message: its reduced features at every planned cut with the base model's logits.
The retrainer numbers each such message (a *joint sample*, 0, 1, ...) and stores its rows in the cuts' sample rings
(gati/rpc/samples.py); `joint_samples` reads them back as one `SampleSet`. Messages that lack a cut (a client's own
samples, say) still teach their cut through the `retrain` RPC, but never grade a cascade.

The rule is the in-process learner's (gati/learning/online.py), through the same pure functions
(gati/learning/refit.py):

1. Every `refit_every` joint samples (or `refit_seconds`), fresh copies of the plan's caches are fitted by
   distillation on the joint samples so far, minus the latest `select_samples`, which build the candidate's
   threshold path.
2. Once `certify_samples` joint samples numbered after the fit's last have come in, `review` tests, on them, the
   whole cascade with the candidate in place (end-to-end agreement with the base model >= target at 1 - alpha/2,
   a fixed-sequence test of one-sided Clopper-Pearson bounds) and the serving caches with their thresholds lowered
   further (the other alpha/2).
3. The faster trial that certified early exits beyond the serving vector, and is faster than it on those samples
   by the bundle's latency model, goes live: every cut's cache and threshold is pushed to its predictor as the
   cut's next version. A candidate that fails, or is slower, is never pushed.
4. Falling back happens on evidence that agreement is below the target, never on a re-test that merely could not
   prove it above (with 500 fresh samples at a 0.97 target a cascade that agrees 98% of the time fails its re-test
   about half the time, and falling back on that halved the cluster's hit rate):
   - one rung down the serving version's ladder of certified vectors (`step_down`, the in-process learner's
     rule), each time the aggregator's anytime-valid live bound is about to fall below the target
     (gati/rpc/live.py): the retrainer's `fallback` RPC. Rung 0 is no early exits. A single step straight to no
     early exits made one early cluster of wrong answers (6 in the first 100 requests of an i.i.d. stream) cost a
     learning cluster 90% of its hits until the next review;
   - straight to no early exits (`no_early_exits`) at a review, when nothing certified and the serving cascade's
     agreement on the fresh samples is below the target with confidence 1 - alpha/2 (its one-sided
     Clopper-Pearson upper bound is below it).
   After a fallback the next review climbs back only as far as it certifies: a rung of the ladder re-tested on
   fresh samples, or a new version.

With an online neighbour tier (the config's `tier`, kept by the index service: gati/rpc/tier.py) the cascade has
one more slot, the tier at its cut (before that cut's cache), exactly as in process: each joint sample carries the
tier's verdict on it from before it was stored, the reviews certify the tier's threshold with the caches', and a
deploy pushes it to the index service after the caches.

What differs from the in-process learner: the ladder is kept by the retrainer in memory (a restarted retrainer
knows only the vector served, its one rung), and a deploy is one push per predictor (and one to the index for the
tier), so requests served during it (milliseconds) may meet new caches at some cuts and old ones at others, a mix
no review certified.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gati.bundle import BundleInfo
from gati.cache import Cache
from gati.errors import GatiError
from gati.learning.neighbours import TIER
from gati.learning.refit import Review, Slot, order_slots, refit_caches, review
from gati.learning.samples import SampleSet
from gati.pipeline.certify import Costs, agreement_upper_bound
from gati.rpc.config import RetrainerConfig
from gati.rpc.samples import SampleRing, TierVerdictRing

log = logging.getLogger("gati.rpc.autorefit")

Refit = Callable[[dict[int, dict], SampleSet, int], dict[int, Cache]]


@dataclass(frozen=True)
class AutoRefitConfig:
    refit_every: int | None      # joint samples since the last refit began that start the next (None: by time only)
    refit_seconds: float | None  # or seconds since then, whichever comes first (None: by count only)
    select_samples: int
    certify_samples: int
    alpha: float
    target: float

    @classmethod
    def of(cls, cfg: RetrainerConfig, bundle_target: float) -> AutoRefitConfig | None:
        """From the retrainer's configuration (0 there means off / the bundle's); None when refits are manual."""
        if cfg.refit_every <= 0 and cfg.refit_seconds <= 0:
            return None
        target = cfg.target if cfg.target > 0 else bundle_target
        if not 0 < cfg.alpha < 1 or not 0 < target < 1:
            raise GatiError(f"retrainer alpha and target must be in (0, 1), got {cfg.alpha} and {target}")
        if cfg.select_samples < 1 or cfg.certify_samples < 1:
            raise GatiError("retrainer select_samples and certify_samples must be >= 1")
        return cls(cfg.refit_every if cfg.refit_every > 0 else None,
                   cfg.refit_seconds if cfg.refit_seconds > 0 else None,
                   cfg.select_samples, cfg.certify_samples, cfg.alpha, target)


@dataclass(frozen=True)
class Serving:
    """The cascade served now: each plan cut's cache and threshold, the online tier's threshold, and the ladder of
    the version's certified vectors it stands on."""
    caches: dict[int, Cache]
    thresholds: dict[int, float]
    tier_threshold: float = math.inf   # inf: no tier, or one that answers nothing
    levels: tuple[tuple[float, ...], ...] = ()  # certified vectors over the slots, conservative first; (): the served
    rung: int = 1                      # levels[rung - 1] is served; 0: no early exits

    def vector(self, slots: list[Slot]) -> list[float]:
        """The served thresholds as a vector over `slots`."""
        return [self.tier_threshold if s.name == TIER else self.thresholds[s.cut] for s in slots]

    def ladder(self, slots: list[Slot]) -> tuple[list[list[float]], int]:
        """(the certified vectors, the rung served): the served vector alone when no ladder is known."""
        if self.levels:
            return [list(v) for v in self.levels], self.rung
        vector = self.vector(slots)
        return ([vector], 1) if any(math.isfinite(t) for t in vector) else ([], 0)


def split_vector(slots: list[Slot], vector) -> tuple[dict[int, float], float]:
    """A threshold vector over `slots` as (each cache's threshold by cut, the tier's threshold: inf without one)."""
    caches = {s.cut: float(t) for s, t in zip(slots, vector) if s.name != TIER}
    tier = [float(t) for s, t in zip(slots, vector) if s.name == TIER]
    return caches, tier[0] if tier else math.inf


DEPLOYED, FALLBACK, CLIMBED = "deployed", "fallback", "climbed"


@dataclass(frozen=True)
class Decision:
    """A cascade to push: every cut's cache and threshold (and the tier's), and what is written beside each cut's
    version."""
    outcome: str                  # DEPLOYED (a certified trial), FALLBACK (down the ladder) or CLIMBED (up it)
    caches: dict[int, Cache]
    thresholds: dict[int, float]
    record: dict[str, float]      # the certificate, or why it fell back
    lower_bound: float            # the certified bound on agreement (0: a fallback certifies nothing new)
    summary: str
    tier_threshold: float = math.inf
    levels: tuple[tuple[float, ...], ...] = ()  # the ladder it stands on (over the slots); (): unchanged
    rung: int = 0                 # the rung it serves (0: no early exits)


@dataclass(frozen=True)
class Outcome:
    """One review, and what it pushed."""
    review: Review
    decision: Decision | None     # None: the serving cascade stays
    pushed: bool                  # every predictor took it


@dataclass
class _Candidate:
    caches: dict[int, Cache] | None  # None: too few samples to fit; only the serving caches are re-tuned
    after: int                       # the last joint sample it could see: fresh ones are numbered above
    select: SampleSet
    fitted_on: int


def no_early_exits(serving: Serving, summary: str, record: dict[str, float]) -> Decision | None:
    """The serving caches with every threshold infinite (the base model answers every request): rung 0 of the same
    ladder; None when that is what is served already."""
    if not any(math.isfinite(t) for t in [*serving.thresholds.values(), serving.tier_threshold]):
        return None
    return Decision(FALLBACK, serving.caches, {cut: math.inf for cut in serving.thresholds},
                    {"fallback": 1.0, **record}, 0.0, summary, math.inf, serving.levels, 0)


def step_down(serving: Serving, slots: list[Slot], summary: str, record: dict[str, float]) -> Decision | None:
    """One rung down the serving version's ladder (rung 0: no early exits); None on rung 0 already."""
    levels, rung = serving.ladder(slots)
    if rung <= 0:
        return None
    if rung == 1:
        return no_early_exits(serving, summary, {**record, "rung": 0.0})
    thresholds, tier = split_vector(slots, levels[rung - 2])
    return Decision(FALLBACK, serving.caches, thresholds, {"fallback": 1.0, "rung": float(rung - 1), **record}, 0.0,
                    f"{summary} (rung {rung - 1} of {len(levels)})", tier, tuple(map(tuple, levels)), rung - 1)


def plan_layout(info: BundleInfo, cuts: set[int], tier: tuple[int, float] | None = None) -> tuple[list[Slot], Costs]:
    """The cascade's slots (the plan's caches at `cuts`, and the online tier when `tier` gives its cut and its
    lookup's milliseconds) and the latency model's costs (the bundle's profile)."""
    entries = [e for e in info.plan.entries if e.cut in cuts]
    profile = info.manifest.profile
    costs = Costs.of(profile, [(e.cut, e.variant) for e in entries])
    slots = [Slot(e.cut, e.variant) for e in entries]
    if tier is not None:
        slots.append(Slot(tier[0], TIER))
        costs.lookup_ms[(tier[0], TIER)] = tier[1]
    return order_slots(slots), costs


def joint_samples(rings: dict[int, SampleRing], after: int, upto: int | None = None,
                  tier: TierVerdictRing | None = None) -> SampleSet:
    """The joint samples numbered in (after, upto] that every cut's ring still holds, in number order; features are
    float32, exactly what the predictors are sent, so that the review scores what is served. With `tier`, each
    sample's tier verdict (label -1 where it holds none)."""
    held = {cut: ring.joint(after, upto) for cut, ring in rings.items()}
    numbers = None
    for rows in held.values():
        mine = rows.requests[rows.has_logits]
        numbers = mine if numbers is None else np.intersect1d(numbers, mine)
    numbers = np.unique(numbers if numbers is not None else np.zeros(0, np.int64))
    features, logits = {}, None
    for cut, rows in held.items():
        at = np.searchsorted(rows.requests, numbers)  # rows are in number order, each number once per ring
        features[cut] = rows.features[at].reshape(len(numbers), -1)
        logits = rows.logits[at]
    n = len(numbers)
    tier_label, tier_confidence = tier.get(numbers) if tier is not None else \
        (np.full(n, -1, np.int64), np.zeros(n, np.float32))
    return SampleSet(numbers, np.ones(n, bool), features,
                     logits if logits is not None else np.zeros((0, 0), np.float32), tier_label, tier_confidence)


class AutoRefit:
    """Decides when to refit and what goes live; the retrainer feeds it samples and carries out its deploys.

    `step()` is called periodically from one thread: it begins a refit when one is due, and reviews the candidate
    once enough fresh joint samples came in. `serving()` reads the cascade served now; `deploy(decision)` pushes a
    version to every cut and says whether every cut took it."""

    def __init__(self, cfg: AutoRefitConfig, slots: list[Slot], costs: Costs, rings: dict[int, SampleRing],
                 serving: Callable[[], Serving], deploy: Callable[[Decision], bool],
                 refit: Refit = refit_caches, tier: TierVerdictRing | None = None):
        self.cfg, self.slots, self.costs, self.rings = cfg, order_slots(slots), costs, rings
        self.serving, self.deploy, self.refit, self.tier = serving, deploy, refit, tier
        self.next_number = 1 + max((r.last_request() for r in rings.values()), default=-1)
        self._mark = (self.next_number, time.monotonic())  # where the last refit began
        self._candidate: _Candidate | None = None
        self._lock = threading.Lock()
        self.last: Outcome | None = None  # the latest review

    def number(self) -> int:
        """The next joint sample's number (the caller stores its rows under it); thread-safe."""
        with self._lock:
            n, self.next_number = self.next_number, self.next_number + 1
            return n

    def step(self) -> Outcome | None:
        if self._candidate is None:
            if self._due():
                self._begin()
            return None
        if self.next_number - 1 - self._candidate.after < self.cfg.certify_samples:
            return None
        return self._review(self._candidate)

    def _due(self) -> bool:
        added = self.next_number - self._mark[0]
        if added <= 0:
            return False
        every, seconds = self.cfg.refit_every, self.cfg.refit_seconds
        return (every is not None and added >= every) or \
            (seconds is not None and time.monotonic() - self._mark[1] >= seconds)

    def _begin(self) -> None:
        after = self.next_number - 1
        self._mark = (self.next_number, time.monotonic())
        pool = joint_samples(self.rings, after=-1, upto=after, tier=self.tier)
        select_rows = np.arange(max(0, len(pool) - self.cfg.select_samples), len(pool))
        fit = pool.subset(np.arange(0, select_rows[0] if len(select_rows) else len(pool)))
        serving = self.serving()
        configs = {s.cut: serving.caches[s.cut].config() for s in self.slots if s.name != TIER}
        caches = self.refit(configs, fit, 0) if len(fit) >= 2 else None
        self._candidate = _Candidate(caches, after, pool.subset(select_rows), len(fit))
        log.info("refit %s on %d joint samples; re-certifying on %d joint samples after number %d",
                 "done" if caches is not None else "skipped (too few samples)", len(fit), self.cfg.certify_samples,
                 after)

    def _review(self, candidate: _Candidate) -> Outcome | None:
        fresh = joint_samples(self.rings, after=candidate.after, tier=self.tier)
        fresh = fresh.subset(np.arange(min(len(fresh), self.cfg.certify_samples)))
        self._candidate = None
        if len(fresh) < self.cfg.certify_samples:  # evicted from the rings before they were read: start over
            log.warning("only %d of %d fresh joint samples are still held; the candidate is dropped", len(fresh),
                        self.cfg.certify_samples)
            return None
        serving = self.serving()
        levels, rung = serving.ladder(self.slots)
        found = review(self.slots, (serving.caches, levels), candidate.caches, candidate.select, fresh, self.costs,
                       self.cfg.target, self.cfg.alpha, retune=True, serving=rung)
        decision = self._decide(found, serving)
        pushed = decision is not None and self.deploy(decision)
        log.info("review of %d fresh joint samples (fitted on %d): %s%s", len(fresh), candidate.fitted_on,
                 found.reason if decision is None else decision.summary,
                 "" if decision is None or pushed else "; the push to the predictors did not complete")
        self.last = Outcome(found, decision, pushed)
        return self.last

    def _decide(self, found: Review, serving: Serving) -> Decision | None:
        """What goes live: the certified trial; else, when the serving cascade's agreement on the fresh samples is
        below the target with confidence 1 - alpha/2, no early exits (the base model answers until a later review
        certifies thresholds again); else, after a fallback, the highest rung the re-test passed above the one
        served; else nothing changes."""
        levels, rung = serving.ladder(self.slots)
        if found.deployed is not None:
            trial, r = found.deployed, found.deployed.result
            thresholds, tier_threshold = split_vector(self.slots, r.thresholds)
            record = {"target": self.cfg.target, "alpha": found.alpha, "lower_bound": r.lower_bound,
                      "agreement": r.agreement, "hit_rate": r.hit_rate, "n": float(r.n),
                      "wrong_hits": float(r.wrong_hits), "expected_ms": trial.expected_ms,
                      "serving_ms": found.incumbent_ms, "made_by_" + trial.name: 1.0}
            tier = "" if not any(s.name == TIER for s in self.slots) else f", tier threshold {tier_threshold:.4f}"
            ladder = tuple(tuple(v) for v in found.levels)
            return Decision(DEPLOYED, trial.caches, thresholds, record, r.lower_bound,
                            f"deployed {trial.name}: agreement >= {self.cfg.target} (lower bound {r.lower_bound:.4f} "
                            f"on {r.n} fresh samples), hit rate {r.hit_rate:.3f}{tier}", tier_threshold, ladder,
                            len(ladder))
        upper = agreement_upper_bound(found.fresh, found.incumbent_wrong, found.alpha)
        if upper >= self.cfg.target:
            climb = found.incumbent_levels_passed  # re-tested on fresh samples: the ladder's rungs up to it hold
            if climb <= rung or not any(map(math.isfinite, levels[climb - 1])):
                return None
            thresholds, tier_threshold = split_vector(self.slots, levels[climb - 1])
            retest = found.trials[0].result
            return Decision(CLIMBED, serving.caches, thresholds, {"climbed_to": float(climb), "n": float(found.fresh)},
                            retest.lower_bound, f"climbed from rung {rung} to {climb} of {len(levels)}, re-certified on "
                                 f"{found.fresh} fresh samples", tier_threshold, tuple(map(tuple, levels)), climb)
        n = found.fresh
        agreement = 1.0 - found.incumbent_wrong / max(n, 1)
        record = {"target": self.cfg.target, "alpha": found.alpha, "n": float(n),
                  "retest_agreement": agreement, "retest_upper_bound": upper}
        return no_early_exits(serving, f"the serving cascade agreed {agreement:.4f} on {n} fresh samples, below "
                                       f"{self.cfg.target} with confidence {1 - found.alpha:.3f} (upper bound "
                                       f"{upper:.4f}), and nothing else certified: no early exits until a review "
                                       "certifies thresholds again", record)
