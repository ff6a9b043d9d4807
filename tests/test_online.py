"""Learning while serving on the tiny model: exact misses, checked hits, an honest live bound, versions that are
certified before they serve (never a broken one), fallback on injected drift and return after re-certification,
and state that survives SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gati.bundle import load_bundle
from gati.data import load_split
from gati.learning.guarantee import FALLBACK, RECERTIFIED
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.learning.refit import refit_caches
from gati.learning.state import REVIEWS, StateDir
from gati.learning.tier_config import TierConfig
from gati.measure.perturb import corrupt
from gati.measure.workloads import Iid, Repeat

pytest.importorskip("faiss")
REPO = Path(__file__).resolve().parent.parent

# Small windows so that a few hundred requests see refits and reviews (the tiny model answers in a millisecond).
FAST = dict(sample_rate=0.3, background=False, coin_seed=0, refit_every=120, select_samples=40, certify_samples=100,
            target=0.9, tier=TierConfig(capacity=256, k=8))


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def split(tiny_data):
    return load_split("imagefolder", tiny_data[0], "test:eval")


def serve(engine: OnlineEngine, bundle, images: np.ndarray) -> tuple[list, np.ndarray]:
    """Every image through the learner, learning settled between requests; (answers, agreed with the base)."""
    answers, agreed = [], []
    for i in range(len(images)):
        x = bundle.preprocess(images[i:i + 1])
        answers.append(engine.predict(x))
        agreed.append(answers[-1].label == engine.predict_base(x))
        engine.settle()
    return answers, np.array(agreed)


def test_misses_are_exact_sampled_hits_are_checked_and_the_bound_is_honest(bundle, split):
    images = Iid(n=300, seed=2).generate(split).images
    with OnlineEngine(bundle, OnlineConfig(**{**FAST, "learn": False})) as engine:
        answers, agreed = serve(engine, bundle, images)
        status = engine.status()
    assert all(ok for a, ok in zip(answers, agreed) if not a.hit)
    assert status.live.requests == 300 and status.live.hits == sum(a.hit for a in answers) > 0
    assert status.live.sampled_hits == sum(a.hit and a.sampled for a in answers) > 0
    assert 0.2 < np.mean([a.sampled for a in answers]) < 0.4  # the coin, p = 0.3
    assert status.live.lower_bound <= agreed.mean()
    assert status.tier_size == 0 and status.reviews == 0  # the guarantee alone: no tier, no refit


def test_repeated_traffic_gets_a_certified_version_and_the_tier_answers_near_duplicates(bundle, split, tmp_path):
    images = Repeat(n=1000, working_set=12, seed=1).generate(split).images
    with OnlineEngine(bundle, OnlineConfig(**FAST), state_dir=str(tmp_path)) as engine:
        answers, agreed = serve(engine, bundle, images)
        status = engine.status()
    assert status.versions_deployed >= 1 and status.version >= 1
    late = answers[-250:]  # once a version certified the tier's threshold
    assert sum(a.exit_name.startswith("tier:") for a in late) > len(late) // 4
    assert status.live.lower_bound <= agreed.mean() and agreed.mean() >= 0.9
    state = StateDir(tmp_path)
    record, caches = state.load_version(state.versions()[-1])
    assert record.certificate.claim == "agreement with the base model >= 0.9" and record.certificate.caches_sha256
    assert record.fitted_on.last < record.certified_on.first  # certified on requests it was not fitted on
    reviews = [json.loads(line) for line in (tmp_path / REVIEWS).read_text().splitlines()]
    assert sum(r["deployed"] is not None for r in reviews) == status.versions_deployed


def test_a_broken_candidate_is_never_deployed(bundle, split):
    def broken(configs, fit, seed):
        fit.logits = np.roll(fit.logits, 1, axis=1)  # teaches every cache the wrong classes
        return refit_caches(configs, fit, seed)

    images = Iid(n=600, seed=3).generate(split).images
    config = OnlineConfig(**{**FAST, "tier": None, "refit_every": 50, "certify_samples": 60})
    with OnlineEngine(bundle, config, refit=broken) as engine:
        answers, _ = serve(engine, bundle, images)
        status = engine.status()
    assert status.reviews >= 1 and status.deployed_by.get("refit", 0) == 0  # retuned thresholds may serve
    assert all(engine.caches[cut] is cache for cut, cache in bundle.caches.items())  # the broken caches never do


def test_injected_drift_falls_back_and_returns_only_after_recertification(bundle, split):
    rng = np.random.default_rng(0)
    clean = Iid(n=300, seed=4).generate(split).images
    drifted = np.stack([corrupt(img, "contrast", 5, rng) for img in Iid(n=700, seed=5).generate(split).images])
    with OnlineEngine(bundle, OnlineConfig(**FAST)) as engine:
        answers, agreed = serve(engine, bundle, np.concatenate([clean, drifted]))
        transitions = engine.status().transitions
    falls = [t for t in transitions if t.kind == FALLBACK]
    assert falls and all(t.request >= len(clean) for t in falls), transitions
    lowest = min(t.to_index for t in falls)
    back = [t for t in transitions if t.kind == RECERTIFIED and t.request > falls[0].request]
    assert back and back[-1].to_index > lowest, transitions  # faster again, through a review only
    climbs = [(a, b) for a, b in zip(transitions, transitions[1:]) if b.to_index > a.to_index]
    assert all(b.kind == RECERTIFIED for _, b in climbs)


def test_learning_runs_beside_concurrent_requests(bundle, split):
    images = Repeat(n=240, working_set=12, seed=6).generate(split).images
    inputs = [bundle.preprocess(images[i:i + 1]) for i in range(len(images))]
    config = OnlineConfig(**{**FAST, "background": True, "coin_seed": None})
    with OnlineEngine(bundle, config) as engine:
        def client(part):
            for x in part:
                engine.predict(x)
        threads = [threading.Thread(target=client, args=(inputs[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.settle()
        status = engine.status()
    assert status.requests == status.live.requests == len(inputs)  # every sampled hit's check came back
    assert status.samples > 0 and status.tier_size > 0


CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from gati.bundle import load_bundle
from gati.data import load_split
from gati.learning.tier_config import TierConfig
from gati.learning.online import OnlineConfig, OnlineEngine
from gati.measure.workloads import Repeat
bundle = load_bundle(sys.argv[1])
images = Repeat(n=5000, working_set=12, seed=1).generate(load_split("imagefolder", sys.argv[2], "test:eval")).images
engine = OnlineEngine(bundle, OnlineConfig(**eval(sys.argv[4])), state_dir=sys.argv[3])
for i in range(len(images)):  # until killed
    engine.predict(bundle.preprocess(images[i:i + 1]))
    engine.settle()
"""


def test_state_survives_sigkill_and_a_restart_resumes_the_latest_certified_version(bundle, tiny_bundle, tiny_data,
                                                                                   tmp_path):
    settings = {**FAST, "save_every": 20, "tier": None, "refit_every": 60, "certify_samples": 60}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_bundle), str(tiny_data[0]), str(tmp_path),
                              repr(settings)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = StateDir(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not state.versions() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.versions(), child.stderr.read().decode()[-2000:] if child.poll() is not None else "no version"
        time.sleep(0.5)  # killed mid-run: between saves, perhaps mid-write
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    latest = StateDir(tmp_path).versions()[-1]
    record, caches = StateDir(tmp_path).load_version(latest)
    with OnlineEngine(bundle, OnlineConfig(**settings), state_dir=str(tmp_path)) as resumed:
        assert resumed.version == latest
        progress = json.loads((tmp_path / "learner.json").read_text())
        assert resumed.status().live.requests == progress["live"]["requests"] > 0
        assert len(resumed.samples) > 0
        x, acts = bundle.preprocess(np.zeros((1, 32, 32, 3), np.uint8)), []
        with torch.inference_mode():
            for stage in bundle.staged.stages[:-1]:
                x = stage(x)
                acts.append(x)
        for cut, cache in caches.items():  # the caches served are the certified ones on disk
            assert torch.equal(resumed.caches[cut](acts[cut])[1], cache(acts[cut])[1])
    assert not list(tmp_path.glob(".tmp-*")) and not list((tmp_path / "versions").glob(".tmp-*"))


def test_the_in_process_front_door_exports_the_live_bound_and_level(bundle, split):
    pytest.importorskip("thrift")
    from gati.rpc.engine_backend import EngineBackend
    from gati.rpc.metrics import AggregatorMetrics
    metrics = AggregatorMetrics()
    engine = OnlineEngine(bundle, OnlineConfig(**{**FAST, "learn": False}), on_checked=metrics.sample)
    backend = EngineBackend(engine, metrics)
    images = Iid(n=60, seed=7).generate(split).images
    try:
        for i in range(len(images)):
            backend.run(bundle.preprocess.array(images[i:i + 1]), time.monotonic() + 10, sampled=False)
        engine.settle()
        counters, gauges = metrics.snapshot()
    finally:
        backend.close()
    status = engine.status()
    assert gauges["live_agreement_lower_bound_ratio"] == pytest.approx(status.live.lower_bound)
    assert gauges["live_agreement_ratio"] == pytest.approx(status.live.point_estimate)
    assert gauges["fallback_level"] == status.level
    assert sum(v for k, v in counters.items() if k.startswith("sampled_requests")) > 0



@pytest.fixture(scope="module")
def later_bundle(tiny_bundle, tiny_data, tmp_path_factory):
    """The tiny bundle with its plan moved to cuts 1 and 2, so that cut 0 carries the tier alone (as the stem does
    in a default ResNet build: its plan has no cache there)."""
    from gati.bundle import cache_file, read_manifest, revise_bundle
    from gati.cache import load_cache
    from gati.runtime.plan import Plan, PlanEntry
    out = tmp_path_factory.mktemp("later") / "tiny"
    revise_bundle(tiny_bundle, read_manifest(tiny_bundle), out=out)
    base = load_bundle(out)
    calib = load_split("imagefolder", tiny_data[0], "test:calib")
    with torch.inference_mode():
        x, acts = base.preprocess(calib.images), []
        for stage in base.staged.stages[:-1]:
            x = stage(x)
            acts.append(x)
    entries = []
    for cut in (1, 2):  # each answers about half of the calibration images
        _, conf = load_cache(out / cache_file(cut, "mlp"))(acts[cut])
        entries.append(PlanEntry(cut, base.staged.cuts[cut], "mlp", float(conf.median())))
    revise_bundle(out, read_manifest(out).replace(plan=Plan(entries, "sync")))
    return load_bundle(out)


def test_a_cut_where_nothing_answers_is_a_miss_not_a_missing_verdict(later_bundle, split):
    """The tier at a cut with no cache, not certified yet (its threshold infinite), must not stop the later caches:
    the learner serves what the plain engine serves, request for request, and learns from its misses. (A missing
    verdict there once made every request run the whole model, and learning from a miss fail on the activations
    the later cuts never recorded.)"""
    from gati.runtime.engine import Engine
    plain = Engine(later_bundle, "sync", graphs=False)
    images = Iid(n=150, seed=8).generate(split).images
    config = OnlineConfig(**{**FAST, "tier": TierConfig(cut=0, capacity=64, k=4), "refit_every": 10**6})
    hits = 0
    with OnlineEngine(later_bundle, config) as engine:
        for i in range(len(images)):
            x = later_bundle.preprocess(images[i:i + 1])
            served, expected = engine.predict(x).answer, plain.predict(x)
            assert (served.label, served.exit_cut) == (expected.label, expected.exit_cut), i
            hits += expected.exit_cut is not None
            engine.settle()
        status = engine.status()
    assert 0 < hits < len(images)
    assert status.samples == len(images) - hits + status.live.sampled_hits  # every request that ran to the end


def test_a_tier_not_yet_certified_is_searched_off_the_request_path_yet_every_coin_sample_has_its_verdict(bundle,
                                                                                                          split):
    """Until a review certifies the tier it answers nothing, so the request path does not search it (that search had
    cost the learning rows of the grid up to a tenth of their speed-up on i.i.d. traffic); the coin-sampled
    requests still carry what it would have said, from the requests before each, for the review to certify on."""
    images = Repeat(n=200, working_set=8, seed=4).generate(split).images
    config = OnlineConfig(**{**FAST, "refit_every": 10**6})
    with OnlineEngine(bundle, config) as engine:
        assert engine.tier is not None
        judge, on_path = engine.tier.judge, []
        serving = threading.local()

        def spy(vector, threshold):
            on_path.append(getattr(serving, "now", False))
            return judge(vector, threshold)

        engine.tier.judge = spy
        for i in range(len(images)):
            x = bundle.preprocess(images[i:i + 1])
            serving.now = True
            engine.predict(x)
            serving.now = False
            engine.settle()
        coin = engine.samples.snapshot(coin_only=True)
    assert on_path and not any(on_path)  # searched, never while a request was served
    assert len(coin) > 20 and (coin.tier_label >= 0).mean() > 0.9  # all but the first few found neighbours
