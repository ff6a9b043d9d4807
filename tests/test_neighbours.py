"""The neighbour tier: bounded memory, least-recently-used replacement, the confidence rule, typed errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gati.errors import GatiError, InvalidInput
from gati.learning.neighbours import NeighbourTier, confidence
from gati.learning.tier_config import TierConfig
from gati.learning.tier_vector import tier_vector

pytest.importorskip("faiss")

SHAPE = (4, 8, 8)  # pool2 -> 16 dimensions


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_tier_never_holds_more_than_its_capacity():
    tier = NeighbourTier(TierConfig(capacity=50, k=4), SHAPE, 10)
    held = tier.nbytes()
    for i, v in enumerate(unit(np.random.default_rng(0), 500)):
        tier.add(v, i % 10)
        assert tier.size == min(i + 1, 50)
    assert tier.nbytes() == held == 50 * (16 * 4 + 8 + 8)  # preallocated: inserts never grow it
    assert tier.inserted == 500


def test_slots_that_keep_answering_survive_while_unused_ones_make_way():
    rng = np.random.default_rng(1)
    tier = NeighbourTier(TierConfig(capacity=40, k=1), SHAPE, 10)
    hot = unit(rng, 5)
    for v in hot:
        tier.add(v, 3)
    for v in unit(rng, 400):  # a stream of one-off requests; the hot five are asked for all along
        tier.add(v, 7)
        for h in hot:
            assert tier.judge(h, threshold=0.5).label == 3
    stored = tier.export()
    assert all(np.isclose(stored["vectors"] @ h, 1.0, atol=1e-5).any() for h in hot)


def test_a_near_duplicate_is_answered_and_a_stranger_is_not():
    rng = np.random.default_rng(2)
    tier = NeighbourTier(TierConfig(capacity=100, k=4), SHAPE, 10)
    image = unit(rng, 1)[0]
    for _ in range(4):  # four earlier frames of the same scene, all answered 6 by the base model
        noisy = image + 0.02 * rng.normal(size=16).astype(np.float32)
        tier.add(noisy / np.linalg.norm(noisy), 6)
    for v in unit(rng, 30):
        tier.add(v, 1)
    assert tier.judge(image, 0.9).label == 6 and tier.judge(image, 0.9).confidence > 0.95
    assert tier.judge(unit(rng, 1)[0], 0.9).confidence < 0.9


def test_one_close_neighbour_that_disagrees_pulls_the_confidence_down():
    close = np.array([0.99, 0.98, 0.97, 0.96], np.float32)
    agreeing = confidence(close, np.array([2, 2, 2, 2]), k=4)
    split = confidence(close, np.array([2, 2, 5, 2]), k=4)
    assert agreeing.label == split.label == 2
    assert agreeing.confidence == pytest.approx(0.975, abs=1e-6)
    assert split.confidence == pytest.approx((0.99 + 0.98 - 0.97 + 0.96) / 4, abs=1e-6)
    few = confidence(close[:1], np.array([2]), k=4)  # one stored copy is not yet evidence enough
    assert few.confidence == pytest.approx(0.99 / 4, abs=1e-6)


def test_an_empty_tier_never_answers_and_the_features_are_unit_vectors():
    tier = NeighbourTier(TierConfig(capacity=10), SHAPE, 10)
    v = tier_vector(tier, torch.rand(1, *SHAPE))
    assert v.shape == (16,) and math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-5)
    assert tier.judge(v, 0.0).confidence == 0.0 and tier.judge(v, 0.0).label == -1


def test_export_and_restore_keep_the_most_recently_used():
    rng = np.random.default_rng(3)
    tier = NeighbourTier(TierConfig(capacity=20, k=2), SHAPE, 10)
    for i, v in enumerate(unit(rng, 20)):
        tier.add(v, i % 10)
    smaller = NeighbourTier(TierConfig(capacity=8, k=2), SHAPE, 10)
    smaller.restore(tier.export())
    assert smaller.size == 8
    assert np.array_equal(smaller.export()["labels"], tier.export()["labels"][-8:])


@pytest.mark.parametrize("bad", [dict(capacity=0), dict(k=0), dict(cut=-1), dict(reducer="pool3"),
                                 dict(capacity=True)])
def test_bad_settings_get_a_typed_error(bad):
    with pytest.raises(GatiError):
        TierConfig(**bad)


def test_bad_input_gets_a_typed_error_and_changes_nothing():
    tier = NeighbourTier(TierConfig(capacity=10), SHAPE, 10)
    with pytest.raises(InvalidInput):
        tier.add(np.zeros(15, np.float32), 1)
    with pytest.raises(InvalidInput):
        tier.add(np.zeros(16, np.float32), 10)
    with pytest.raises(InvalidInput):
        tier_vector(tier, torch.zeros(1, 3, 8, 8))
    assert tier.size == 0
