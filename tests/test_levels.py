"""Certified levels: every vector fixed-sequence testing passed is kept (a few of them) in the plan, and the engine
switches between them, level 0 being no early exits."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gati.bundle import load_bundle, read_manifest
from gati.data import load_split
from gati.errors import GatiError
from gati.pipeline.certify import Scores, agreement_lower_bound, certify, exit_index
from gati.pipeline.planner import LEVELS, spread_levels
from gati.runtime.engine import Engine
from gati.runtime.plan import Plan, PlanEntry


def test_certify_keeps_every_vector_that_passed_in_sequence_order():
    rng = np.random.default_rng(0)
    n = 2000
    entries = [Scores(0, "x", rng.random(n).astype(np.float32), rng.random(n) < 0.97)]
    sequence = [np.array([t]) for t in (0.99, 0.9, 0.7, 0.5, 0.2, 0.0)]
    result = certify(entries, sequence, target=0.97)
    assert [v[0] for v in result.passed] == [v[0] for v in sequence[:len(result.passed)]]
    assert 0 < len(result.passed) < len(sequence) and result.tested == len(result.passed) + 1
    assert np.array_equal(result.passed[-1], result.thresholds)
    assert [v[0] for v in result.sequence] == [v[0] for v in sequence]  # kept whole, tested or not
    for v in result.passed:  # each one's Clopper-Pearson bound cleared the target
        wrong = int((~entries[0].correct[exit_index(entries, v) == 0]).sum())
        assert agreement_lower_bound(n, wrong) >= 0.97


def test_levels_spread_evenly_from_the_most_conservative_to_the_chosen():
    passed = [np.array([float(i)]) for i in range(30)]
    spread = spread_levels(passed)
    assert len(spread) == LEVELS and spread[0][0] == 0 and spread[-1][0] == 29
    assert all(a[0] < b[0] for a, b in zip(spread, spread[1:]))
    assert spread_levels(passed[:3]) == passed[:3]


def test_a_plan_reads_old_manifests_as_one_level_and_keeps_levels_in_cut_order():
    entries = [PlanEntry(3, "b", "mlp", 0.8), PlanEntry(1, "a", "linear", 0.9)]
    old = Plan.from_dict({"mode": "sync", "entries": [vars(e) for e in entries]})
    assert old.levels == [[math.inf, math.inf], [0.9, 0.8]]
    plan = Plan(entries, "sync", [[math.inf, 0.99], [0.85, 0.8]])  # given in the entries' order (cut 3, cut 1)
    assert [e.cut for e in plan.entries] == [1, 3] and plan.levels[1:] == [[0.99, math.inf], [0.8, 0.85]]
    assert Plan.from_dict(plan.to_dict()).levels == plan.levels
    with pytest.raises(ValueError, match="thresholds"):
        Plan(entries, "sync", [[0.5]])


def test_a_built_bundle_keeps_nested_levels_ending_at_its_plan(tiny_bundle):
    plan = read_manifest(tiny_bundle).plan
    levels = plan.levels
    assert 2 <= len(levels) <= LEVELS + 1 and all(math.isinf(t) for t in levels[0])
    assert levels[-1] == [e.threshold for e in plan.entries]
    for looser, tighter in zip(levels[2:], levels[1:-1]):  # the path only ever lowers thresholds
        assert all(a <= b for a, b in zip(looser, tighter))


def test_the_engine_switches_levels_between_requests(tiny_bundle, tiny_data):
    bundle = load_bundle(tiny_bundle)
    data = load_split("imagefolder", tiny_data[0], "test:eval")
    inputs = [bundle.preprocess(data.images[i:i + 1]) for i in range(40)]
    engine = Engine(bundle)
    top = len(engine.levels) - 1
    assert engine.level == top
    hits_top = sum(engine.predict(x).exit_cut is not None for x in inputs)
    engine.use_level(0)
    answers = [engine.predict(x) for x in inputs]
    assert all(a.exit_cut is None and a.stages_run == len(engine.stages) for a in answers)
    assert [a.label for a in answers] == [engine.predict_base(x) for x in inputs]
    engine.use_level(1)
    hits_low = sum(engine.predict(x).exit_cut is not None for x in inputs)
    assert 0 < hits_top and hits_low <= hits_top
    for bad in (-1, top + 1, 1.0, True):
        with pytest.raises(GatiError, match="level"):
            engine.use_level(bad)
