"""Refitting and review, as pure functions over samples: a broken candidate is never deployed, nor a slower one."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gati.cache import make_cache
from gati.errors import GatiError
from gati.learning.neighbours import TIER
from gati.learning.refit import (
    REFIT,
    RETUNE,
    Slot,
    order_slots,
    refit_caches,
    review,
    slot_scores,
)
from gati.learning.samples import Sample, SampleBook, SampleSet
from gati.pipeline.certify import Costs

SHAPE, CLASSES = (6, 2, 2), 3  # a linear cache pools 6 channels


def samples(n: int, seed: int, start: int = 0, tier_right: float = 0.0) -> SampleSet:
    """Features whose first three channels say the class (base logits follow them), the tier right at `tier_right`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(CLASSES, size=n)
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    feats[np.arange(n), labels] += 4.0
    logits = np.zeros((n, CLASSES), np.float32)
    logits[np.arange(n), labels] = 5.0
    right = rng.random(n) < tier_right
    tier_label = np.where(right, labels, (labels + 1) % CLASSES)
    return SampleSet(np.arange(start, start + n), np.ones(n, bool), {0: feats.astype(np.float16)}, logits,
                     tier_label.astype(np.int64), np.where(right, 0.99, 0.2).astype(np.float32))


CONFIG = make_cache("linear", SHAPE, CLASSES, epochs=30).config()
COSTS = Costs([1.0, 3.0], {(0, "linear"): 0.1, (0, TIER): 0.05})
SLOTS = [Slot(0, "linear")]


def fitted(fit: SampleSet, shuffle: bool = False):
    """Caches (one, at cut 0) fitted on `fit`; `shuffle` teaches them the wrong classes."""
    if shuffle:
        fit = SampleSet(fit.requests, fit.coin, fit.features, np.roll(fit.logits, 1, axis=1), fit.tier_label,
                        fit.tier_confidence)
    return refit_caches({0: CONFIG}, fit)


def test_a_refitted_cache_learns_the_base_models_answers():
    cache = fitted(samples(300, 0))[0]
    scores = slot_scores(SLOTS, {0: cache}, samples(200, 1))[0]
    assert scores.correct.mean() > 0.95


def trial(found, name):
    return next(t for t in found.trials if t.name == name)


def test_a_refitted_candidate_is_certified_and_deployed_when_the_serving_caches_are_no_good():
    fit, select, fresh = samples(300, 0), samples(150, 1, 300), samples(400, 2, 450)
    incumbent = (fitted(samples(300, 5), shuffle=True), [[math.inf]])
    found = review(SLOTS, incumbent, fitted(fit), select, fresh, COSTS, target=0.95, alpha=0.05)
    assert found.deployed is not None and found.deployed.name == REFIT
    assert found.deployed.result.hit_rate > 0.5 and found.deployed.expected_ms < found.incumbent_ms
    assert found.incumbent_ms == pytest.approx(found.base_ms)  # its one level never answers early
    assert found.alpha == 0.025 and found.levels[-1] == list(found.deployed.result.thresholds)


def test_retuning_goes_on_from_the_serving_levels_to_the_early_exits_the_traffic_allows():
    select, fresh = samples(150, 1, 300), samples(400, 2, 450)
    incumbent = (fitted(samples(300, 5)), [[0.999]])
    found = review(SLOTS, incumbent, None, select, fresh, COSTS, target=0.95, alpha=0.05)
    assert found.deployed is not None and found.deployed.name == RETUNE and found.incumbent_levels_passed == 1
    assert found.deployed.result.passed[0][0] == pytest.approx(0.999)  # the serving level first, then lower
    assert found.deployed.result.hit_rate > 0.5
    plain = review(SLOTS, incumbent, None, select, fresh, COSTS, target=0.95, alpha=0.05, retune=False)
    assert plain.deployed is None and plain.incumbent_levels_passed == 1  # a re-test only


def test_a_broken_candidate_is_never_deployed():
    """Sure of every answer and wrong on most: a 1-nearest-neighbour cache that learned the wrong classes."""
    pytest.importorskip("faiss")
    knn = make_cache("knn", SHAPE, CLASSES, k=1).config()
    fit, select, fresh = samples(300, 0), samples(150, 1, 300), samples(400, 2, 450)
    rolled = SampleSet(fit.requests, fit.coin, fit.features, np.roll(fit.logits, 1, axis=1), fit.tier_label,
                       fit.tier_confidence)
    broken = refit_caches({0: knn}, rolled)
    slots, costs = [Slot(0, "knn")], Costs([1.0, 3.0], {(0, "knn"): 0.1})
    found = review(slots, (refit_caches({0: knn}, fit), [[1.0]]), broken, select, fresh, costs, 0.95, 0.05)
    assert not trial(found, REFIT).result.passed  # its first vector failed certification
    assert found.deployed is None or found.deployed.name == RETUNE
    assert found.incumbent_levels_passed == 1  # the serving version still passes on the same fresh samples
    # not even against a version that never answers early (nothing else could be deployed here)
    found = review(slots, (broken, [[math.inf]]), broken, select, fresh, costs, 0.95, 0.05)
    assert found.deployed is None and "no trial" in found.reason


def test_a_candidate_slower_than_the_serving_version_is_not_deployed():
    fit, select, fresh = samples(300, 0), samples(150, 1, 300), samples(400, 2, 450)
    incumbent = (fitted(samples(300, 5)), [[0.9], [0.5]])
    poor = fitted(fit, shuffle=True)  # certified only at a few (wrong) hits, within the error budget
    found = review(SLOTS, incumbent, poor, select, fresh, COSTS, target=0.95, alpha=0.05, retune=False)
    assert found.deployed is None and found.incumbent_levels_passed == 2
    assert trial(found, REFIT).expected_ms > found.incumbent_ms


def test_the_tier_is_certified_with_the_caches_and_answers_first_at_its_cut():
    slots = order_slots([Slot(0, "linear"), Slot(0, TIER)])
    assert slots[0].name == TIER
    fit, select, fresh = samples(300, 0), samples(150, 1, 300, 0.9), samples(400, 2, 450, 0.9)
    found = review(slots, (fitted(fit), [[math.inf, math.inf]]), fitted(fit), select, fresh, COSTS,
                   target=0.95, alpha=0.05)
    assert found.deployed is not None and found.deployed.result.hit_rate >= 0.85
    tier_threshold, _ = found.levels[-1]
    assert tier_threshold <= 0.99 + 1e-6  # the tier answers (first) at the chosen level


def test_bad_input_gets_a_typed_error():
    with pytest.raises(GatiError):
        refit_caches({0: CONFIG}, samples(1, 0))
    with pytest.raises(GatiError):
        review(SLOTS, (fitted(samples(50, 0)), []), None, samples(5, 0), samples(0, 1), COSTS, 0.9, 0.05)


def test_the_sample_book_keeps_the_most_recent_and_snapshots_by_request():
    book = SampleBook(10, [0], CLASSES)
    for s in samples(25, 0).samples():
        book.add(Sample(s.request, s.request % 2 == 0, s.features, s.logits, s.tier))
    assert len(book) == 10 and book.added == 25
    assert book.snapshot().requests.tolist() == list(range(15, 25))
    assert book.snapshot(upto=19, coin_only=True).requests.tolist() == [16, 18]
    assert book.count(after=20) == 2 and book.count(after=20, coin_only=False) == 4
    again = SampleSet.from_arrays(book.snapshot().to_arrays())
    assert np.array_equal(again.features[0], book.snapshot().features[0])
