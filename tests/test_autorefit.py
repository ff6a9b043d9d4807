"""The retrainer's automatic refits (gati/rpc/autorefit.py) without processes: joint samples are read back whole,
refits start by count, a good candidate goes live only after the whole cascade is re-certified on later samples,
and a broken one never does."""
from __future__ import annotations

import math

import numpy as np

from gati.cache import make_cache
from gati.learning.refit import REFIT, RETUNE, Review, Slot, refit_caches
from gati.learning.samples import SampleSet
from gati.pipeline.certify import Costs, agreement_lower_bound, agreement_upper_bound
from gati.rpc.autorefit import (
    DEPLOYED,
    FALLBACK,
    AutoRefit,
    AutoRefitConfig,
    Decision,
    Serving,
    joint_samples,
    no_early_exits,
)
from gati.rpc.samples import CheckedSample, SampleRing

SHAPE, CLASSES = (6, 2, 2), 3
CONFIG = make_cache("linear", SHAPE, CLASSES, epochs=30).config()
FEATS = (6,)  # a linear cache's reduced input: the pooled channels
SLOTS = [Slot(0, "linear")]
COSTS = Costs([1.0, 3.0], {(0, "linear"): 0.1})


def sample(rng: np.random.Generator) -> CheckedSample:
    """Features whose first three channels say the class; the base logits follow them."""
    label = int(rng.integers(CLASSES))
    feats = rng.normal(size=FEATS).astype(np.float32)
    feats[label] += 4.0
    logits = np.zeros(CLASSES, np.float32)
    logits[label] = 5.0
    return CheckedSample(feats, label, logits)


def fitted(n: int, seed: int, shuffle: bool = False):
    """A cache fitted on `n` samples; `shuffle` teaches it the wrong classes."""
    rng = np.random.default_rng(seed)
    rows = [sample(rng) for _ in range(n)]
    logits = np.stack([s.logits for s in rows])
    fit = SampleSet(np.arange(n), np.ones(n, bool), {0: np.stack([s.features for s in rows])},
                    np.roll(logits, 1, axis=1) if shuffle else logits, np.full(n, -1), np.zeros(n, np.float32))
    return refit_caches({0: CONFIG}, fit)[0]


class Cluster:
    """What the retrainer gives the refits: its rings, the cascade served, and a deploy that records pushes."""

    def __init__(self, serving: Serving, refit=refit_caches, **cfg):
        self.ring = SampleRing(4000, FEATS, CLASSES)
        self.serving, self.pushed = serving, []
        config = AutoRefitConfig(**{"refit_every": 400, "refit_seconds": None, "select_samples": 150,
                                    "certify_samples": 400, "alpha": 0.05, "target": 0.95, **cfg})
        self.auto = AutoRefit(config, SLOTS, COSTS, {0: self.ring}, lambda: self.serving, self._deploy, refit)
        self.rng = np.random.default_rng(7)

    def _deploy(self, decision: Decision) -> bool:
        self.pushed.append(decision)
        self.serving = Serving(decision.caches, decision.thresholds)
        return True

    def traffic(self, n: int) -> list:
        """`n` joint samples, stepping the refits after each as the retrainer's thread would; the reviews made."""
        found = []
        for _ in range(n):
            self.ring.append(sample(self.rng), self.auto.number())
            outcome = self.auto.step()
            if outcome is not None:
                found.append(outcome)
        return found


def test_joint_samples_are_those_every_cut_holds_in_number_order():
    rng = np.random.default_rng(0)
    a, b = SampleRing(10, FEATS, CLASSES), SampleRing(10, FEATS, CLASSES)
    kept = {}
    for number in range(6):
        s = sample(rng)
        a.append(s, number)
        if number != 3:  # cut b lost this one
            b.append(s, number)
        kept[number] = s
    a.append(sample(rng))  # a cut's own sample (not a sampled request): never joint
    got = joint_samples({0: a, 1: b}, after=0)
    assert list(got.requests) == [1, 2, 4, 5] and got.coin.all()
    assert np.array_equal(got.features[1][2], kept[4].features)
    assert list(got.labels) == [kept[n].label for n in (1, 2, 4, 5)]
    assert list(joint_samples({0: a, 1: b}, after=-1, upto=2).requests) == [0, 1, 2]


def test_a_good_candidate_goes_live_only_after_certification_on_later_samples():
    cluster = Cluster(Serving({0: fitted(300, 5, shuffle=True)}, {0: math.inf}))  # serving: never answers
    assert cluster.traffic(400 + 399) == [] and cluster.pushed == []  # the fit began at 400; 399 fresh are too few
    (outcome,) = cluster.traffic(1)
    found = outcome.review
    assert found.deployed is not None and found.deployed.name == REFIT and outcome.pushed
    (decision,) = cluster.pushed
    assert decision.outcome == DEPLOYED and decision.caches is found.deployed.caches
    assert decision.thresholds[0] < math.inf and decision.lower_bound >= 0.95
    assert found.deployed.result.n == 400 and decision.record["n"] == 400  # the 400 samples after the fit's last


def test_a_broken_candidate_is_never_deployed():
    def broken(configs, fit, seed):
        shuffled = SampleSet(fit.requests, fit.coin, fit.features, np.roll(fit.logits, 1, axis=1), fit.tier_label,
                             fit.tier_confidence)
        return refit_caches(configs, shuffled, seed)

    # At 0.95 a broken cache may still go live at thresholds where it answers under 5% of requests (its
    # certificate holds); at 0.99, with 400 fresh samples, any wrong hit fails the vector.
    bad = fitted(300, 5, shuffle=True)
    cluster = Cluster(Serving({0: bad}, {0: math.inf}), refit=broken, target=0.99)
    outcomes = cluster.traffic(2000)
    assert outcomes and all(o.review.deployed is None and o.decision is None for o in outcomes)
    assert cluster.pushed == []
    assert all(t.result.hit_rate == 0 for o in outcomes for t in o.review.trials)  # what certified answers nothing


def test_serving_caches_that_are_good_are_retuned_not_replaced_by_a_broken_candidate():
    def broken(configs, fit, seed):
        return {0: fitted(300, 9, shuffle=True)}

    cluster = Cluster(Serving({0: fitted(300, 5)}, {0: 0.999}), refit=broken)
    good = cluster.serving.caches[0]
    assert len(cluster.traffic(800)) == 1
    for decision in cluster.pushed:  # the serving caches, answering more; never the broken ones
        assert decision.outcome == DEPLOYED and decision.record["made_by_" + RETUNE] == 1.0
        assert decision.caches[0] is good and decision.thresholds[0] <= 0.999 and decision.lower_bound >= 0.95


def test_a_serving_cascade_that_fails_its_retest_falls_back_to_no_early_exits():
    wrong = fitted(300, 5, shuffle=True)  # confidently wrong, and served at a threshold where it answers

    def broken(configs, fit, seed):
        return {0: fitted(300, 9, shuffle=True)}

    cluster = Cluster(Serving({0: wrong}, {0: 0.0}), refit=broken)
    outcomes = cluster.traffic(800)
    assert [o.decision.outcome for o in outcomes] == [FALLBACK] and outcomes[0].pushed
    assert cluster.serving.thresholds == {0: math.inf} and cluster.serving.caches[0] is wrong
    assert outcomes[0].review.incumbent_levels_passed == 0
    cluster.traffic(1600)  # it climbs back only through a review that certifies what it serves, and falls again
    for d in cluster.pushed[1:]:
        assert (d.outcome == DEPLOYED and d.lower_bound >= 0.95) or (d.outcome == FALLBACK and d.thresholds[0] == math.inf)


def review_with(wrong: int, fresh: int) -> Review:
    """A review in which nothing certified and the serving cascade made `wrong` errors on `fresh` samples."""
    return Review([], 0, 1.0, 3.0, None, "nothing certified", [], 0.025, wrong, fresh)


def test_a_retest_that_cannot_prove_the_target_keeps_the_serving_cascade_and_one_that_shows_it_below_falls_back():
    cluster = Cluster(Serving({0: fitted(300, 5)}, {0: 0.5}), target=0.97)
    # 10 wrong of 500 (agreement 0.98): too few samples to prove >= 0.97, nowhere near showing it is below
    assert agreement_lower_bound(500, 10, 0.025) < 0.97 < agreement_upper_bound(500, 10, 0.025)
    assert cluster.auto._decide(review_with(10, 500), cluster.serving) is None
    # 30 wrong of 500 (0.94): below 0.97 with confidence 0.975
    assert agreement_upper_bound(500, 30, 0.025) < 0.97
    decision = cluster.auto._decide(review_with(30, 500), cluster.serving)
    assert decision.outcome == FALLBACK and decision.thresholds == {0: math.inf}
    assert decision.record["retest_upper_bound"] < 0.97


def test_no_early_exits_serves_the_same_caches_at_infinite_thresholds_once():
    serving = Serving({0: fitted(300, 5)}, {0: 0.5})
    decision = no_early_exits(serving, "asked", {"live": 1.0})
    assert decision.outcome == FALLBACK and decision.caches is serving.caches and decision.thresholds == {0: math.inf}
    assert no_early_exits(Serving(serving.caches, decision.thresholds), "again", {}) is None  # served already


def test_the_online_tier_is_a_slot_certified_with_the_cascade_and_deployed_beside_it():
    """A tier whose verdicts (kept per joint sample) agree with the base model is certified with the caches: the
    decision carries its threshold apart from the caches'; a fallback turns it off too."""
    from gati.learning.neighbours import TIER
    from gati.rpc.samples import TierVerdictRing

    ring, tier = SampleRing(4000, FEATS, CLASSES), TierVerdictRing(4000)
    serving = Serving({0: fitted(300, 5, shuffle=True)}, {0: math.inf})  # the cache: confidently wrong, off
    pushed = []

    def deploy(decision: Decision) -> bool:
        pushed.append(decision)
        return True

    config = AutoRefitConfig(400, None, 150, 400, 0.05, 0.95)
    costs = Costs([1.0, 3.0], {(0, "linear"): 0.1, (0, TIER): 0.05})
    auto = AutoRefit(config, [Slot(0, TIER), *SLOTS], costs, {0: ring}, lambda: serving, deploy,
                     refit=lambda configs, fit, seed: {0: fitted(300, 9, shuffle=True)}, tier=tier)
    rng = np.random.default_rng(3)
    for _ in range(800):
        s = sample(rng)
        number = auto.number()
        ring.append(s, number)
        tier.put(number, s.label, 0.9 if rng.random() < 0.7 else 0.2)  # 70% of requests: a confident right answer
        auto.step()
    got = joint_samples({0: ring}, after=-1, tier=tier)
    assert (got.tier_label == got.labels).all() and set(np.round(got.tier_confidence.astype(float), 1).tolist()) == {0.2, 0.9}
    (decision,) = pushed
    assert decision.outcome == DEPLOYED and 0.2 < decision.tier_threshold <= 0.9
    assert decision.thresholds == {0: math.inf} or decision.thresholds[0] > 0.99  # the wrong cache stays (nearly) off
    assert Serving(decision.caches, decision.thresholds, decision.tier_threshold).vector(auto.slots)[0] == \
        decision.tier_threshold
    off = no_early_exits(Serving(decision.caches, decision.thresholds, decision.tier_threshold), "asked", {})
    assert off.tier_threshold == math.inf and all(t == math.inf for t in off.thresholds.values())


def test_a_live_fallback_steps_down_the_ladder_and_a_review_climbs_back_what_it_recertifies():
    """The cluster falls back as the in-process learner does: one certified vector at a time, then no early exits;
    a review re-tests the ladder on fresh samples and climbs as far as it passes."""
    from gati.rpc.autorefit import CLIMBED, step_down
    good = fitted(300, 5)
    ladder = ((0.999,), (0.99,), (0.9,))
    serving = Serving({0: good}, {0: 0.9}, levels=ladder, rung=3)
    one = step_down(serving, SLOTS, "asked", {})
    assert one.outcome == FALLBACK and (one.thresholds, one.rung, one.levels) == ({0: 0.99}, 2, ladder)
    two = step_down(Serving({0: good}, one.thresholds, levels=ladder, rung=2), SLOTS, "asked", {})
    assert two.thresholds == {0: 0.999} and two.rung == 1
    none = step_down(Serving({0: good}, two.thresholds, levels=ladder, rung=1), SLOTS, "asked", {})
    assert none.thresholds == {0: math.inf} and none.rung == 0 and none.levels == ladder
    assert step_down(Serving({0: good}, none.thresholds, levels=ladder, rung=0), SLOTS, "asked", {}) is None
    # without a known ladder the served vector is the only rung: the next step is no early exits
    assert step_down(Serving({0: good}, {0: 0.9}), SLOTS, "asked", {}).thresholds == {0: math.inf}

    # fallen to rung 1, a review whose re-test passes the whole ladder (and finds nothing faster) climbs to its top
    cluster = Cluster(Serving({0: good}, {0: 0.999}, levels=ladder, rung=1),
                      refit=lambda configs, fit, seed: {0: fitted(300, 9, shuffle=True)})
    original = cluster._deploy

    def deploy(decision):
        original(decision)
        cluster.serving = Serving(decision.caches, decision.thresholds, decision.tier_threshold,
                                  decision.levels or cluster.serving.levels, decision.rung)
        return True

    cluster.auto.deploy = deploy
    outcomes = cluster.traffic(800)
    assert len(outcomes) == 1 and outcomes[0].decision is not None
    decision = outcomes[0].decision
    assert decision.outcome in (CLIMBED, DEPLOYED) and decision.rung > 1 and decision.caches[0] is good
    if decision.outcome == CLIMBED:
        assert decision.thresholds == {0: ladder[decision.rung - 1][0]} and decision.levels == ladder
