"""The live-agreement bound covers under any order of errors; the fallback controller steps back and never forward."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from gati.errors import GuaranteeError
from gati.learning.guarantee import (
    FALLBACK,
    RECERTIFIED,
    RECOVERED,
    FallbackController,
    LiveAgreement,
    wrong_bounds,
)
from gati.learning.simulate import (
    Served,
    adversarial_errors,
    bursty_errors,
    drifting_errors,
    fixed_time_bounds,
    iid_errors,
    miscoverage,
    serve_with_fallback,
)

P, ALPHA = 0.05, 0.05
RUNS, REQUESTS = 300, 5000
SLACK = 0.03  # 2.4 standard errors of a share of 0.05 over 300 runs


def ours(seen_wrong: np.ndarray, unsampled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return wrong_bounds(seen_wrong, unsampled, P, ALPHA)


SCENARIOS = {
    "iid": lambda rng: iid_errors(rng, RUNS, REQUESTS, P),
    "bursty": lambda rng: bursty_errors(rng, RUNS, REQUESTS, P),
    "drift": lambda rng: drifting_errors(rng, RUNS, REQUESTS, P),
    "adversary": lambda rng: adversarial_errors(rng, RUNS, REQUESTS, P, ALPHA),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bound_covers_every_scenario_at_every_request(scenario):
    served = SCENARIOS[scenario](np.random.default_rng(11))
    assert served.wrong.sum() > RUNS * 20  # the runs do make wrong answers
    above, below = miscoverage(served, ours)
    assert above <= ALPHA + SLACK and below <= ALPHA + SLACK


def test_coverage_check_catches_a_bound_valid_only_at_fixed_times():
    """The exact binomial bound holds at any one fixed request but, checked at every request, fails far more often
    than alpha: the coverage test can fail, and anytime validity is what the mixture buys."""
    served = drifting_errors(np.random.default_rng(11), RUNS, REQUESTS, P)
    assert miscoverage(served, fixed_time_bounds(P, ALPHA))[0] > ALPHA + SLACK
    assert miscoverage(served, ours)[0] <= ALPHA + SLACK


def test_bound_covers_when_p_changes_and_errors_hide_where_p_is_low():
    """p alternates between 0.02 and 0.3 every 100 requests, and hits are wrong only while p is low: a bound that
    pooled the two rates would undercount the wrong answers; one count per p does not."""
    runs, n, above, below = 150, 1500, 0, 0
    rng = np.random.default_rng(5)
    for _ in range(runs):
        live, wrong_so_far, ever_above, ever_below = LiveAgreement(0.02, ALPHA), 0, False, False
        for t in range(n):
            live.set_sampling_probability(0.02 if (t // 100) % 2 == 0 else 0.3)
            hit = bool(rng.random() < 0.8)
            wrong = hit and live.p < 0.1 and bool(rng.random() < 0.2)
            sampled = hit and live.draw_coin(rng)
            live.observe(hit, sampled, wrong if sampled else None)
            wrong_so_far += wrong
            lower, upper = live.wrong_bounds
            ever_above |= wrong_so_far > upper
            ever_below |= wrong_so_far < lower
        above, below = above + ever_above, below + ever_below
    assert above / runs <= ALPHA + SLACK and below / runs <= ALPHA + SLACK


def test_live_agreement_equals_the_vectorised_bound_request_by_request():
    served = bursty_errors(np.random.default_rng(3), 1, 3000, P)
    live, bounds = LiveAgreement(P, ALPHA), []
    for hit, wrong, sampled in zip(served.hits[0], served.wrong[0], served.sampled[0]):
        live.observe(bool(hit), bool(hit and sampled), bool(wrong) if hit and sampled else None)
        bounds.append(live.wrong_bounds)
    seen_wrong, unsampled, _ = served.counts()
    lower, upper = ours(seen_wrong, unsampled)
    assert np.array_equal(np.array(bounds), np.stack([lower[0], upper[0]], axis=1))
    assert live.lower_bound == 1 - bounds[-1][1] / 3000 and live.upper_bound == 1 - bounds[-1][0] / 3000


def test_bound_lies_between_what_was_seen_and_what_could_be():
    served = iid_errors(np.random.default_rng(8), 20, 2000, P, error=0.1)
    seen_wrong, unsampled, _ = served.counts()
    lower, upper = ours(seen_wrong, unsampled)
    assert (seen_wrong <= lower).all() and (lower <= upper).all() and (upper <= seen_wrong + unsampled).all()
    assert (upper < seen_wrong + unsampled)[:, -1].all()  # by the end, the samples say more than "every hit wrong"
    assert (lower > seen_wrong)[:, -1].all()  # ... and more than "only the wrong answers seen"


def test_sampling_every_hit_gives_the_exact_agreement():
    live = LiveAgreement(p=1.0)
    for wrong in [False, True, False, False, True] * 20:
        live.observe(True, True, wrong)
    live.observe(False, False)
    assert live.wrong_bounds == (40, 40) and live.lower_bound == pytest.approx(1 - 40 / 101) == live.upper_bound


def test_point_estimate_weights_each_sampled_wrong_hit_by_one_over_p():
    live = LiveAgreement(p=0.1)
    live.observe(True, True, True)
    for _ in range(99):
        live.observe(False, False)
    assert live.point_estimate == pytest.approx(0.9)
    live.set_sampling_probability(0.5)
    live.observe(True, True, True)
    assert live.point_estimate == pytest.approx(1 - 12 / 101)
    assert live.snapshot().sampling_probability == 0.5
    assert LiveAgreement().lower_bound == 0.0 and LiveAgreement().point_estimate == 1.0


def test_would_fall_below_is_what_one_more_sampled_wrong_hit_does():
    rng = np.random.default_rng(2)
    live, checked = LiveAgreement(0.1), 0
    for t in range(3000):
        hit = bool(rng.random() < 0.8)
        sampled = hit and live.draw_coin(rng)
        live.observe(hit, sampled, bool(rng.random() < 0.05) if sampled else None)
        if t % 50 == 0:
            for target in (0.9, 0.95, 0.97):
                after = copy.deepcopy(live)
                after.observe(True, True, True)
                assert live.would_fall_below(target) == (after.lower_bound < target)
                checked += live.would_fall_below(target)
    assert checked > 0  # some states were one wrong answer from a target


@pytest.mark.parametrize("call, message", [
    (lambda: LiveAgreement(p=0.0), "p must be in"),
    (lambda: LiveAgreement(p=1.5), "p must be in"),
    (lambda: LiveAgreement(alpha=1.0), "alpha must be in"),
    (lambda: LiveAgreement().set_sampling_probability(-0.1), "p must be in"),
    (lambda: LiveAgreement().observe(False, False, False), "a miss"),
    (lambda: LiveAgreement().observe(True, False, True), "an unsampled hit"),
    (lambda: LiveAgreement().observe(True, True), "a sampled hit needs wrong"),
    (lambda: LiveAgreement().observe(1, False), "hit must be a bool"),
    (lambda: LiveAgreement().would_fall_below(1.0), "target must be in"),
    (lambda: wrong_bounds(np.array([1]), np.array([-1]), 0.1), "non-negative"),
    (lambda: FallbackController(LiveAgreement(), 0.97, 0), "vectors"),
    (lambda: FallbackController(LiveAgreement(), 0.97, 3, start=3), "index must be an integer in 0..2"),
    (lambda: FallbackController(LiveAgreement(), 0.97, 3, step=0), "step"),
    (lambda: FallbackController(LiveAgreement(), 0.97, 3, headroom=0), "headroom"),
    (lambda: LiveAgreement().would_fall_below(0.9, more=0), "more must be"),
    (lambda: FallbackController(LiveAgreement(), 0.97, 3).recertified(5), "index must be an integer in 0..2"),
])
def test_bad_arguments_are_refused_with_a_typed_error(call, message):
    with pytest.raises(GuaranteeError, match=message):
        call()


def test_a_refused_observation_changes_nothing():
    live = LiveAgreement(0.2)
    live.observe(True, True, False)
    before = live.snapshot()
    with pytest.raises(GuaranteeError):
        live.observe(True, False, True)
    assert live.snapshot() == before


# --- the fallback controller -------------------------------------------------------------------------------------

# Four vectors: 0 = no early exits; 3 = the certified one. From request 8000 the two fastest go bad.
HIT_RATE = (0.0, 0.5, 0.7, 0.85)
CALM = (0.0, 0.002, 0.004, 0.006)
BURST = (0.0, 0.002, 0.15, 0.4)
ONSET = 8000


def test_an_error_burst_is_detected_and_the_controller_steps_back_until_the_errors_stop():
    controller = serve_with_fallback(seed=4, n=16000, onset=ONSET, hit_rate=HIT_RATE, error_before=CALM,
                                     error_after=BURST, p=0.2, target=0.97)
    fallbacks = [t for t in controller.transitions if t.kind == FALLBACK]
    assert [(t.from_index, t.to_index) for t in fallbacks] == [(3, 2), (2, 1)]
    assert ONSET < fallbacks[0].request < ONSET + 600  # detection: the bound's headroom used up, then at once
    assert controller.armed and all(t.lower_bound >= 0.969 for t in fallbacks)  # before it fell below, not after
    recovered = controller.transitions[-1]
    assert recovered.kind == RECOVERED and recovered.request > fallbacks[-1].request and controller.index == 1
    assert not controller.live.would_fall_below(0.97)
    controller.recertified(3)
    assert controller.index == 3 and controller.transitions[-1].kind == RECERTIFIED
    assert (controller.transitions[-1].from_index, controller.transitions[-1].to_index) == (1, 3)


def test_calm_streams_rarely_fall_back_and_one_step_can_go_straight_to_no_early_exits():
    fell_back = [serve_with_fallback(seed=seed, n=8000, onset=8000, hit_rate=HIT_RATE, error_before=CALM,
                                     error_after=CALM, p=0.2, target=0.97).transitions != [] for seed in range(8)]
    assert sum(fell_back) <= 1
    straight = serve_with_fallback(seed=4, n=10000, onset=ONSET, hit_rate=HIT_RATE, error_before=CALM,
                                   error_after=BURST, p=0.2, target=0.97, step=3)
    assert [(t.from_index, t.to_index) for t in straight.transitions if t.kind == FALLBACK] == [(3, 0)]


def test_a_vector_bad_from_the_start_is_caught_before_the_bound_could_reach_the_target():
    """The lower bound starts at 0; an upper bound below the target catches a vector that errs at once, as soon as
    the target's budget admits `headroom` wrong answers (3 / (1 - 0.97) = 100 requests)."""
    controller = serve_with_fallback(seed=2, n=3000, onset=0, hit_rate=HIT_RATE, error_before=BURST,
                                     error_after=BURST, p=0.2, target=0.97)
    first = controller.transitions[0]
    assert first.kind == FALLBACK and first.request == 100 and first.lower_bound < 0.97
    assert controller.index <= 1


@pytest.mark.parametrize("seed", range(5))
def test_the_controller_never_goes_faster_on_its_own(seed):
    """Whatever the errors (here: 40% of hits wrong), the index only ever goes down without recertified."""
    rng = np.random.default_rng(seed)
    controller = FallbackController(LiveAgreement(0.3), 0.9, vectors=5)
    indices = []
    for _ in range(3000):
        hit = bool(rng.random() < 0.7)
        sampled = hit and controller.live.draw_coin(rng)
        indices.append(controller.observe(hit, sampled, bool(rng.random() < 0.4) if sampled else None))
    assert all(b <= a for a, b in zip(indices, indices[1:]))
    assert indices[-1] < 4  # it did fall back
    assert all(t.to_index <= t.from_index for t in controller.transitions)


def test_served_counts_are_running_sums():
    served = Served(np.array([[True, True, False]]), np.array([[True, False, False]]),
                    np.array([[False, True, True]]))
    seen_wrong, unsampled, wrong = served.counts()
    assert seen_wrong.tolist() == [[0, 0, 0]] and unsampled.tolist() == [[1, 1, 1]] and wrong.tolist() == [[1, 1, 1]]


def test_the_live_counts_and_the_controller_survive_a_round_trip_through_plain_values():
    rng = np.random.default_rng(11)
    controller = FallbackController(LiveAgreement(0.2), 0.95, 4)
    for t in range(3000):
        if t == 1500:
            controller.live.set_sampling_probability(0.5)  # two p's in the counts
        hit = bool(rng.random() < 0.8)
        sampled = hit and controller.live.draw_coin(rng)
        wrong = bool(rng.random() < (0.01 if t < 2000 else 0.3)) if sampled else None
        controller.observe(hit, sampled, wrong)
    state = json.loads(json.dumps({"live": controller.live.to_state(), "controller": controller.to_state()}))
    live = LiveAgreement.from_state(state["live"])
    assert live.snapshot() == controller.live.snapshot() and live.wrong_bounds == controller.live.wrong_bounds
    again = FallbackController(live, 0.95, 4)
    again.restore(state["controller"])
    assert again.index == controller.index and again.transitions == controller.transitions
    assert again.armed == controller.armed
    again.recertified(5, vectors=6)  # a new version with more levels
    assert again.index == 5 and again.vectors == 6 and again.transitions[-1].kind == RECERTIFIED
    with pytest.raises(GuaranteeError):
        LiveAgreement.from_state({"p": 0.2})
