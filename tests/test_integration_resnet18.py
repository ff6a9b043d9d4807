"""End to end on the shared CIFAR-10 ResNet-18: real checkpoint, real data, small subsets."""
from dataclasses import replace

import numpy as np
import pytest

from gati.bundle import load_bundle
from gati.data import load_split
from gati.measure.evaluate import evaluate
from gati.pipeline.build import BuildConfig, build
from gati.runtime.engine import Engine
from gati.runtime.plan import Plan, PlanEntry

TARGET = 0.95


@pytest.fixture(scope="module")
def r18_bundle(shared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("r18") / "bundle"
    build(BuildConfig(checkpoint=shared_dir / "models" / "cifar10_resnet18.pt", dataset="cifar10",
                      data_dir=shared_dir / "data", out=out, arch="resnet18", target=TARGET,
                      variants=["linear", "mlp"], train_limit=1000, calib_limit=1000))
    return load_bundle(out)


@pytest.fixture(scope="module")
def eval_data(shared_dir):
    return load_split("cifar10", shared_dir / "data", "test:eval", limit=400, seed=1)


@pytest.fixture(scope="module")
def evaluated(r18_bundle, eval_data):
    return evaluate(r18_bundle, eval_data, seed=0, progress=False)


def test_checkpoint_accuracy_on_unseen_images(evaluated, eval_data):
    # the unsplit model's answer on each image, from the side-by-side replay (one request per image)
    assert sorted(r.source for r in evaluated.records) == list(range(len(eval_data)))
    assert np.mean([r.base == eval_data.labels[r.source] for r in evaluated.records]) >= 0.88


def test_certified_agreement_holds_on_held_out_images(r18_bundle, evaluated):
    c = r18_bundle.manifest.certified
    assert c.claim == f"agreement with the base model >= {TARGET}" and c.nominal_lower_bound >= TARGET
    assert evaluated.hit_rate > 0.3, "caches at the deep cuts of ResNet-18 should answer often at 95%"
    assert evaluated.agreement >= TARGET - 0.02  # 400 images: sampling slack around a 95%-confident bound
    assert evaluated.requests == 400 and sum(evaluated.hits_per_layer.values()) == round(evaluated.hit_rate * 400)


def test_a_miss_is_exactly_the_base_answer(r18_bundle, eval_data, evaluated):
    inputs = [r18_bundle.preprocess(eval_data.images[i:i + 1]) for i in range(60)]
    # The certified plan may answer every one of a few hundred images early (at 95% a deep cache
    # hits nearly all), so misses are forced too: thresholds above 1 make every lookup run and miss.
    assert r18_bundle.plan.entries
    strict = Plan([PlanEntry(e.cut, e.cut_name, e.variant, 2.0) for e in r18_bundle.plan.entries],
                  r18_bundle.plan.mode)
    forced = Engine(replace(r18_bundle, plan=strict))
    for x in inputs:
        answer = forced.predict(x)
        assert answer.exit_cut is None and answer.label == forced.predict_base(x)
    # the certified plan's own misses, from the held-out replay (the engine and the base model on each request)
    assert all(r.answer == r.base for r in evaluated.records if not r.hit)
