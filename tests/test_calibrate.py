import math

import numpy as np
import pytest

from gati.pipeline.certify import (
    Costs,
    Scores,
    agreement_lower_bound,
    calibrate,
    certify,
    exit_costs,
    greedy_path,
    look_alpha,
    search_thresholds,
    simulate,
    split_select_certify,
)


def synthetic_scores(n, cuts=(0, 1, 2), seed=0, skill=(0.5, 0.7, 0.9)):
    """Caches whose confidence carries signal: confident answers are right more often."""
    rng = np.random.default_rng(seed)
    out = []
    for cut, s in zip(cuts, skill):
        conf = rng.uniform(0, 1, n)
        correct = rng.uniform(0, 1, n) < s + (1 - s) * conf
        out.append(Scores(cut, "mlp", conf, correct))
    return out


COSTS = Costs([1.0, 1.0, 1.0, 1.0], {(0, "mlp"): 0.05, (1, "mlp"): 0.05, (2, "mlp"): 0.05})


def test_clopper_pearson_matches_closed_form_for_zero_errors():
    # with no errors the bound solves (1 - e)^n = alpha
    assert agreement_lower_bound(100, 0) == pytest.approx(0.05 ** (1 / 100), abs=1e-6)


def test_lower_bound_is_monotone_and_below_the_observed_rate():
    bounds = [agreement_lower_bound(1000, w) for w in range(0, 60, 5)]
    assert all(a > b for a, b in zip(bounds, bounds[1:]))
    assert all(b < 1 - w / 1000 for b, w in zip(bounds, range(0, 60, 5)))


def test_exit_costs_sync_and_async():
    entries = synthetic_scores(10)
    sync = exit_costs(entries, COSTS, "sync")
    assert sync.tolist() == pytest.approx([1.05, 2.10, 3.15, 4.15])
    async_ = exit_costs(entries, COSTS, "async")  # a hit is seen one stage later; lookups hide
    assert async_.tolist() == pytest.approx([2.0, 3.0, 4.0, 4.0])


def test_search_keeps_the_wrong_hit_budget_and_saves_latency():
    entries = synthetic_scores(2000)
    cost = exit_costs(entries, COSTS, "sync")
    for budget in (0, 20, 100):
        t = search_thresholds(entries, cost, budget)
        sim = simulate(entries, t, cost)
        assert sim["wrong"] <= budget
    assert simulate(entries, search_thresholds(entries, cost, 100), cost)["latency_ms"] < cost[-1]


def test_no_thresholds_means_every_request_is_right():
    entries = synthetic_scores(500)
    sim = simulate(entries, np.full(3, np.inf), exit_costs(entries, COSTS, "sync"))
    assert sim["agreement"] == 1.0 and sim["hit_rate"] == 0.0


def test_certification_stops_at_the_first_failing_vector():
    entries = synthetic_scores(400)
    aggressive = np.zeros(3)          # every request hits at the first cache: ~75% agreement
    safe = np.full(3, np.inf)
    result = certify(entries, [safe, aggressive, safe], target=0.95)
    assert result.tested == 2 and np.isinf(result.thresholds).all()


def test_certified_bound_holds_on_fresh_data():
    """The promise itself: thresholds certified on one sample keep the target on a fresh one."""
    target = 0.95
    misses = 0
    for seed in range(8):
        calib = synthetic_scores(3000, seed=seed)
        labels = np.arange(3000) % 10
        select, cert = split_select_certify(labels, [f"img{i:05d}" for i in range(3000)])
        thresholds, result = calibrate(calib, COSTS, "sync", target, select, cert)
        assert result.lower_bound >= target or np.isinf(thresholds).all()
        fresh = synthetic_scores(20000, seed=100 + seed)
        sim = simulate(fresh, np.array(thresholds), exit_costs(fresh, COSTS, "sync"))
        misses += sim["agreement"] < target
        assert sim["hit_rate"] > 0.2
    assert misses <= 1  # the bound may fail with probability 5% per run


def test_the_error_budget_is_split_over_looks():
    shares = [look_alpha(k) for k in range(1, 10_000)]
    assert shares[0] == pytest.approx(0.05 * 6 / math.pi ** 2) and sum(shares) < 0.05
    assert all(a > b for a, b in zip(shares, shares[1:]))


def test_the_hit_rate_bound_is_below_the_measured_hit_rate():
    calib = synthetic_scores(2000, seed=3)
    select, cert = split_select_certify(np.arange(2000) % 10, [f"i{i}" for i in range(2000)])
    _, result = calibrate(calib, COSTS, "sync", 0.95, select, cert, alpha=0.01)
    assert 0 < result.hit_rate_lower_bound < result.hit_rate and result.alpha == 0.01


def test_select_and_certify_halves_are_disjoint_and_balanced():
    labels = np.repeat(np.arange(4), 50)
    ids = [f"x/{i:03d}" for i in range(200)]
    select, cert = split_select_certify(labels, ids)
    assert len(set(select) & set(cert)) == 0 and len(select) + len(cert) == 200
    assert all((labels[select] == c).sum() == 25 for c in range(4))
    assert math.isclose(len(select), len(cert))


def test_measured_overlap_replaces_the_naive_async_model():
    entries = synthetic_scores(10)
    costs = Costs(COSTS.stage_ms, COSTS.lookup_ms, {(0, "mlp"): 0.5, (1, "mlp"): 0.5, (2, "mlp"): 0.5})
    # the lookup at cut 0 slows stage 1 by 0.5 ms although it is shorter than the stage
    assert exit_costs(entries, costs, "async").tolist() == pytest.approx([2.5, 4.0, 5.5, 5.5])


def _early_trap_and_late_free_hits(n_free=300):
    """Cut 0's confident band saves the most per wrong hit (one in eight is wrong); cut 2 has many
    confident, right answers that save less each."""
    n = 600
    conf0 = np.zeros(n)
    conf0[:60] = 0.99              # the band a one-shot greedy search spends its errors on
    correct0 = np.ones(n, dtype=bool)
    correct0[:60:8] = False
    conf2 = np.zeros(n)
    conf2[100:100 + n_free] = 0.95
    return [Scores(0, "mlp", conf0, correct0), Scores(2, "mlp", conf2, conf2 > 0)]


def test_the_ramped_search_takes_free_hits_before_spending_errors():
    entries = _early_trap_and_late_free_hits()
    cost = exit_costs(entries, Costs([1.0, 10.0, 10.0, 1.0], {(0, "mlp"): 0.05, (2, "mlp"): 0.05}), "sync")
    one_shot = greedy_path(entries, cost, max_wrong=30, levels=1)
    ramped = greedy_path(entries, cost, max_wrong=30, levels=16)
    first_error = next(i for i, (wrong, _) in enumerate(ramped) if wrong > 0)
    # every free hit at cut 2 is on the path before the first wrong hit
    assert simulate(entries, ramped[first_error - 1][1], cost)["hits"] == [0, 300]
    assert simulate(entries, one_shot[1][1], cost)["hits"][0] > 0  # the trap comes first otherwise
    # so a certify part on which the trap is worse still certifies the free hits
    worse = [Scores(0, "mlp", entries[0].conf, np.arange(600) >= 60), entries[1]]  # all 60 wrong
    for path, hits in ((ramped, 300), (one_shot, 0)):
        result = certify(worse, [t for _, t in path[1:]], target=0.97)
        assert simulate(worse, result.thresholds, cost)["hits"][1] == hits


def test_every_exit_pays_the_requests_own_cost_in_either_mode():
    entries = [Scores(0, "mlp", np.zeros(0), np.zeros(0, bool)), Scores(2, "mlp", np.zeros(0), np.zeros(0, bool))]
    bare = Costs([1.0, 10.0, 10.0, 1.0], {(0, "mlp"): 0.05, (2, "mlp"): 0.05})
    paid = Costs(bare.stage_ms, bare.lookup_ms, request_ms=0.3)
    for mode in ("sync", "async"):
        assert exit_costs(entries, paid, mode) == pytest.approx(exit_costs(entries, bare, mode) + 0.3)
