"""The latency model against a replay, per exit (gati.measure.latency_model)."""
import numpy as np
import pytest

from gati.bundle import read_bundle
from gati.measure.latency_model import FINAL, check_model, modelled_exit_ms


def test_modelled_exits_are_the_profiles_stages_and_lookups(tiny_bundle):
    m = read_bundle(tiny_bundle).manifest
    modelled = modelled_exit_ms(m)
    p = m.profile
    assert list(modelled) == [e.cut_name for e in m.plan.entries] + [FINAL]
    first = m.plan.entries[0]
    assert p.request_ms > 0  # measured by the profile
    if m.plan.mode == "sync":  # a request that exits at the first cut pays the stages up to it, its lookup, and
        # what every request pays
        assert modelled[first.cut_name] == pytest.approx(sum(p.stage_ms[:first.cut + 1]) + p.lookup(first.cut,
                                                                                                     first.variant)
                                                         + p.request_ms)
    # the full model, every lookup paid on the way, and the request's own cost
    assert modelled[FINAL] >= sum(p.stage_ms) + p.request_ms - 1e-9


def test_a_replay_that_took_twice_the_model_shows_a_model_error_of_minus_half(tiny_bundle):
    m = read_bundle(tiny_bundle).manifest
    modelled = modelled_exit_ms(m)
    names = np.array(list(modelled) * 3, dtype=object)
    ms_gati = np.array([2 * modelled[n] for n in names])
    ms_base = np.full(len(names), 2 * m.profile.base_ms)
    check = check_model(m, names, ms_gati, ms_base)
    assert [e.exit_name for e in check.exits] == list(modelled)
    assert all(e.error == pytest.approx(-0.5) and e.share == pytest.approx(1 / len(modelled)) for e in check.exits)
    assert check.modelled_speedup == pytest.approx(check.measured_speedup)


def test_an_exit_the_plan_does_not_have_is_refused(tiny_bundle):
    m = read_bundle(tiny_bundle).manifest
    with pytest.raises(ValueError, match="does not have"):
        check_model(m, np.array(["nowhere"], dtype=object), np.ones(1), np.ones(1))
