"""Refitting and review, as pure functions over samples: a broken candidate is never deployed, nor a slower one."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gati.cache import make_cache
from gati.errors import GatiError
from gati.learning.neighbours import TIER
from gati.learning.refit import Slot, order_slots, refit_caches, review, slot_scores
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
    """A cache fitted on `fit`; `shuffle` teaches it the wrong classes (a broken candidate)."""
    if shuffle:
        fit = SampleSet(fit.requests, fit.coin, fit.features, np.roll(fit.logits, 1, axis=1), fit.tier_label,
                        fit.tier_confidence)
    return refit_caches({0: CONFIG}, fit)


def test_a_refitted_cache_learns_the_base_models_answers():
    cache = fitted(samples(300, 0))[0]
    scores = slot_scores(SLOTS, {0: cache}, samples(200, 1))[0]
    assert scores.correct.mean() > 0.95


def test_a_good_candidate_is_certified_and_deployed_over_an_incumbent_that_never_hits():
    fit, select, fresh = samples(300, 0), samples(150, 1, 300), samples(400, 2, 450)
    incumbent = ({0: fitted(samples(300, 5))[0]}, [[math.inf]])
    found = review(SLOTS, incumbent, fitted(fit), select, fresh, COSTS, target=0.95, alpha=0.05)
    assert found.deploy and found.candidate is not None and found.candidate.passed
    assert found.candidate.hit_rate > 0.5 and found.candidate_ms < found.incumbent_ms
    assert found.incumbent_ms == pytest.approx(found.base_ms)
    assert found.alpha == 0.025 and found.levels and found.levels[-1] == list(found.candidate.thresholds)


def test_a_broken_candidate_is_never_deployed():
    """Confidently wrong on today's traffic, though it looked right on the samples its path was built on."""
    fit, fresh = samples(300, 0), samples(400, 2, 450)
    broken = fitted(fit, shuffle=True)
    looked_right = samples(150, 1, 300)
    looked_right.logits = np.roll(looked_right.logits, 1, axis=1)
    incumbent = ({0: fitted(samples(300, 5))[0]}, [[0.9], [0.5]])
    found = review(SLOTS, incumbent, broken, looked_right, fresh, COSTS, target=0.95, alpha=0.05)
    assert not found.deploy and "no vector" in found.reason and not found.candidate.passed
    assert found.incumbent_levels_passed == 2  # the incumbent still passes on the same fresh samples
    # built on honest samples, its path spends the error budget on a few wrong hits: certified, but slower
    honest = review(SLOTS, incumbent, broken, samples(150, 1, 300), fresh, COSTS, target=0.95, alpha=0.05)
    assert not honest.deploy and honest.candidate_ms > honest.incumbent_ms


def test_a_candidate_slower_than_the_incumbent_is_not_deployed():
    fit, select, fresh = samples(300, 0), samples(150, 1, 300), samples(400, 2, 450)
    incumbent = ({0: fitted(samples(300, 5))[0]}, [[0.5]])
    slower = {0: fitted(fit)[0]}
    found = review(SLOTS, incumbent, slower, select.subset(np.arange(5)), fresh, COSTS, target=0.95, alpha=0.05)
    assert not found.deploy and "slower" in found.reason and found.candidate_ms > found.incumbent_ms


def test_the_tier_is_certified_with_the_caches_and_answers_first_at_its_cut():
    slots = order_slots([Slot(0, "linear"), Slot(0, TIER)])
    assert slots[0].name == TIER
    fit, select, fresh = samples(300, 0), samples(150, 1, 300, 0.9), samples(400, 2, 450, 0.9)
    found = review(slots, ({0: fitted(fit)[0]}, [[math.inf, math.inf]]), fitted(fit), select, fresh, COSTS,
                   target=0.95, alpha=0.05)
    assert found.deploy
    tier_threshold, cache_threshold = found.levels[-1]
    assert tier_threshold <= 0.99 + 1e-6 and math.isfinite(cache_threshold)  # both answer at the chosen level


def test_bad_input_gets_a_typed_error():
    with pytest.raises(GatiError):
        refit_caches({0: CONFIG}, samples(1, 0))
    with pytest.raises(GatiError):
        review(SLOTS, ({0: fitted(samples(50, 0))[0]}, []), None, samples(5, 0), samples(0, 1), COSTS, 0.9, 0.05)


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
