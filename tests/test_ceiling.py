"""The tier ceiling: idealised tiers replayed on a stream's sources and base answers, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gati.errors import WorkloadError
from gati.measure.ceiling import clairvoyant_reach, last_k_reach, speedup_bound


def test_last_k_answers_when_the_last_k_copies_agreed_and_counts_a_flip_as_wrong():
    sources = np.array([0, 0, 0, 1, 0, 1])
    labels = np.array([3, 3, 3, 5, 4, 5])
    reach = last_k_reach(sources, labels, k=2)
    # request 2: copies 0 and 1 said 3, answered right; request 4: copies 1 and 2 said 3, the base says 4: wrong;
    # request 5: source 1 has one copy stored, not k
    assert reach.answered == pytest.approx(2 / 6)
    assert reach.wrong == pytest.approx(1 / 6)
    assert last_k_reach(sources, labels, k=1).answered == pytest.approx(4 / 6)  # every repeat


def test_last_k_waits_for_agreement_again_after_a_flip():
    reach = last_k_reach(np.zeros(5, dtype=int), np.array([1, 2, 1, 1, 1]), k=2)
    # request 2 sees [1, 2], request 3 sees [2, 1]: both unsure; request 4 sees [1, 1]
    assert (reach.answered, reach.wrong) == (pytest.approx(1 / 5), 0.0)


def test_clairvoyant_takes_the_purest_sources_first_and_a_share_of_the_one_the_budget_cuts():
    sources = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([1, 1, 1, 2, 3, 2])
    # a source's first request is never answerable; source 0's two repeats are pure, source 1's are half wrong
    assert clairvoyant_reach(sources, labels, budget=0.0).answered == pytest.approx(2 / 6)
    half = clairvoyant_reach(sources, labels, budget=0.5 / 6)
    assert (half.answered, half.wrong) == (pytest.approx(3 / 6), pytest.approx(0.5 / 6))
    everything = clairvoyant_reach(sources, labels, budget=1.0)
    assert (everything.answered, everything.wrong) == (pytest.approx(4 / 6), pytest.approx(1 / 6))


def test_clairvoyant_never_answers_more_than_the_repeats_and_stays_within_its_budget():
    rng = np.random.default_rng(0)
    sources = rng.integers(0, 40, size=2000)
    flips = rng.random(2000) < rng.random(40)[sources] * 0.2  # each source its own flip rate
    labels = np.where(flips, 9, sources % 9)
    repeats = 1 - len(np.unique(sources)) / len(sources)
    for budget in (0.0, 0.005, 0.01, 0.05):
        reach = clairvoyant_reach(sources, labels, budget)
        assert reach.wrong <= budget + 1e-12
        assert reach.answered <= repeats + 1e-12
    assert clairvoyant_reach(sources, labels, 0.01).answered >= clairvoyant_reach(sources, labels, 0.005).answered


def test_speedup_bound_is_the_inverse_of_the_mean_cost():
    assert speedup_bound(0.5, 0.1) == pytest.approx(1 / 0.55)
    assert speedup_bound(0.9, 0.035, 1.07) == pytest.approx(1 / (0.9 * 0.035 + 0.1 * 1.07))
    assert speedup_bound(0.0, 0.1) == 1.0


@pytest.mark.parametrize("call", [
    lambda: last_k_reach(np.zeros(3, dtype=int), np.zeros(2, dtype=int), 1),
    lambda: last_k_reach(np.zeros(3, dtype=int), np.zeros(3), 1),
    lambda: last_k_reach(np.zeros(3, dtype=int), np.zeros(3, dtype=int), 0),
    lambda: last_k_reach(np.zeros(0, dtype=int), np.zeros(0, dtype=int), 1),
    lambda: clairvoyant_reach(np.zeros(3, dtype=int), np.zeros(3, dtype=int), 1.5),
    lambda: speedup_bound(1.2, 0.1),
    lambda: speedup_bound(0.5, 0.0),
])
def test_bad_input_is_a_typed_error(call):
    with pytest.raises(WorkloadError):
        call()
