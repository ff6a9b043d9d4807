"""The engine and bundles on the tiny model: early exits, exact misses, bad input, cancellation."""
import threading

import numpy as np
import pytest
import torch

from gati.bundle import load_bundle
from gati.data import load_split
from gati.errors import InvalidInput
from gati.runtime.engine import Cancelled, Engine
from gati.runtime.plan import Plan, PlanEntry


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def eval_inputs(bundle, tiny_data):
    data = load_split("imagefolder", tiny_data[0], "test:eval")
    return [bundle.preprocess(data.images[i:i + 1]) for i in range(len(data))]


def test_the_plan_hits_and_keeps_its_certified_promise(bundle, eval_inputs):
    assert bundle.plan.entries, "the tiny model's caches should earn a place in the plan"
    assert bundle.manifest.certified.claim == "agreement with the base model >= 0.9"
    engine = Engine(bundle)
    answers = [engine.predict(x) for x in eval_inputs]
    base = [engine.predict_base(x) for x in eval_inputs]
    hits = sum(a.exit_cut is not None for a in answers)
    agreement = np.mean([a.label == b for a, b in zip(answers, base)])
    assert hits > 0
    assert agreement >= 0.85  # certified >= 0.9 at 95%; 240 held-out images leave sampling slack


def test_a_miss_returns_exactly_the_base_models_answer(bundle, eval_inputs):
    engine = Engine(bundle)
    for x in eval_inputs[:60]:
        answer = engine.predict(x)
        if answer.exit_cut is None:
            assert answer.label == engine.predict_base(x)
            assert answer.stages_run == len(bundle.staged.stages)


def test_with_unreachable_thresholds_every_answer_is_the_base_models(bundle, eval_inputs):
    strict = Plan([PlanEntry(e.cut, e.cut_name, e.variant, 2.0) for e in bundle.plan.entries])
    engine = Engine(_with_plan(bundle, strict))
    for x in eval_inputs[:40]:
        assert engine.predict(x).label == engine.predict_base(x)


def test_async_mode_gives_the_same_labels_as_sync(bundle, eval_inputs):
    sync, async_ = Engine(bundle, "sync"), Engine(bundle, "async")
    try:
        for x in eval_inputs[:40]:
            a, b = sync.predict(x), async_.predict(x)
            assert a.label == b.label
            if a.exit_cut is not None:  # async sees a hit one stage later
                assert b.exit_cut == a.exit_cut and b.stages_run == a.stages_run + 1
    finally:
        async_.close()


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 16, 16), "shape"),
    (torch.zeros(2, 3, 32, 32), "shape"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (np.zeros((1, 3, 32, 32), dtype=np.float32), "torch.Tensor"),
])
def test_bad_input_gets_a_typed_error(bundle, bad, message):
    with pytest.raises(InvalidInput, match=message):
        Engine(bundle).predict(bad)


def test_cancellation_stops_between_stages(bundle, eval_inputs):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        Engine(bundle).predict(eval_inputs[0], cancel=cancel)


def _with_plan(bundle, plan):
    from dataclasses import replace
    return replace(bundle, plan=plan)
