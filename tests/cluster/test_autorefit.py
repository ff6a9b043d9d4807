"""Automatic refits in the cluster (gati/rpc/autorefit.py), with real processes: every sampled request reaches the
retrainer as one joint sample, a refit starts by itself after `refit_every` of them, the whole cascade is
re-certified on later ones, and what passes is served by every predictor, thresholds included, and survives a
predictor's restart. No retrain RPC is called."""
from __future__ import annotations

import json

import pytest

from gati.rpc.gen.gati_idl import Predictor
from gati.rpc.transport import Limits, Pool
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import Cluster, Load, until

EVERY, SELECT, CERTIFY = 60, 20, 60


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    # A low target, so that re-tuning the serving caches certifies lower thresholds on 60 samples: a deploy is
    # certain and what it changes is visible. The certificate's rule is tested in tests/test_autorefit.py.
    return start_cluster(request, tmp_path_factory, cluster_bundle, sample_rate=1.0, state=True,
                         retrainer_options={"refit_every": EVERY, "select_samples": SELECT,
                                            "certify_samples": CERTIFY, "target": 0.5, "resync_s": 1.0})


def served(cluster: Cluster, name: str) -> dict[str, tuple[int, float]]:
    ep = cluster.cfg.predictor(name)
    pool = Pool(Predictor.Client, ep.host, ep.port, Limits(call_s=30, secret=cluster.secret))
    return {c.cut_name: (c.version, c.threshold) for c in pool.call("caches")}


def test_a_refit_starts_by_itself_and_the_recertified_cascade_is_served_everywhere(cluster, eval_images):
    before = {**served(cluster, "predictor-0"), **served(cluster, "predictor-1")}
    with Load(cluster, eval_images, threads=2) as load:
        until(lambda: cluster.status("retrainer").counters.get("retrainer_reviews.deployed", 0) >= 1, timeout_s=120)
        load.wait_for(len(load.answers) + 20)  # answers go on during and after the deploy
    assert not load.errors
    counters = cluster.status("retrainer").counters
    assert counters["retrainer_joint_samples"] >= EVERY + CERTIFY
    after = {**served(cluster, "predictor-0"), **served(cluster, "predictor-1")}
    assert set(after) == set(before) and len(after) >= 2  # the plan's cuts, on two predictors
    assert all(after[cut][0] >= 1 for cut in after)  # every cut took the new version
    for cut, (version, threshold) in after.items():  # with the threshold the review certified
        record = json.loads((cluster.cfg.state_folder("retrainer") / "versions" / cut / f"v{version:04d}.json")
                            .read_text())
        assert record["threshold"] == threshold and record["certificate"]["lower_bound"] >= 0.5
        assert record["certificate"]["n"] == CERTIFY
    gauges = cluster.status("retrainer").gauges
    assert gauges["retrainer_review_lower_bound"] >= 0.5
    assert {cut: gauges[f"cache_version.{cut}"] for cut in after} == {cut: float(v) for cut, (v, _) in after.items()}

    kept = served(cluster, "predictor-1")  # no load now: no further refit begins
    cluster.kill("predictor-1")
    cluster.restart("predictor-1")  # its state directory gives back each version and its threshold
    assert served(cluster, "predictor-1") == kept
