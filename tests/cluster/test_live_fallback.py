"""The cluster's live guarantee with real processes (gati/rpc/live.py): the aggregator's anytime-valid bound on
agreement is exported with its point estimate, and when a cache that answers wrongly is served the bound's fall
makes the aggregator ask the retrainer for no early exits, which every predictor then serves: later answers are
the full model's. Refits are off here, so nothing climbs back."""
from __future__ import annotations

import math

import pytest
import torch

from gati.bundle import cache_file
from gati.rpc.gen.gati_idl import Predictor
from gati.rpc.gen.gati_idl.ttypes import CacheUpdate
from gati.rpc.transport import Limits, Pool
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import Cluster, Load, cache_with_outputs, until


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    return start_cluster(request, tmp_path_factory, cluster_bundle, sample_rate=1.0,
                         retrainer_options={"refit_every": 0, "refit_seconds": 0})


def predictor(cluster: Cluster, name: str) -> Pool:
    ep = cluster.cfg.predictor(name)
    return Pool(Predictor.Client, ep.host, ep.port, Limits(call_s=30, secret=cluster.secret))


def test_a_wrong_cache_makes_the_live_bound_fall_back_to_no_early_exits_everywhere(cluster, cluster_bundle,
                                                                                     eval_images):
    with Load(cluster, eval_images, threads=2) as load:
        load.wait_for(40)
    gauges = cluster.status("aggregator").gauges
    assert 0 < gauges["live_agreement_lower_bound_ratio"] <= gauges["live_agreement_ratio"] <= 1

    # Answers wrongly, and at a threshold where it answers every request that reaches it.
    wrong = cache_with_outputs(cluster_bundle / cache_file(1, "linear"), lambda v: torch.roll(v, 1, dims=0))
    predictor(cluster, "predictor-1").call("deploy", CacheUpdate(1, 1, wrong, 0.0))
    with Load(cluster, eval_images, threads=2) as load:
        until(lambda: cluster.status("retrainer").counters.get("retrainer_live_fallbacks.pushed", 0) >= 1,
              timeout_s=60)
        n = len(load.answers)
        load.wait_for(n + 30)
        after = load.answers[n + 5:]  # a few may have been in flight during the push
    assert not load.errors
    fallbacks = cluster.status("aggregator").counters["live_fallbacks"]
    assert 1 <= fallbacks <= 10, fallbacks  # asked at most once a second while the push is made
    served = {c.cut: c.threshold for name in ("predictor-0", "predictor-1")
              for c in predictor(cluster, name).call("caches")}
    assert served and all(math.isinf(t) for t in served.values())
    assert after and all(p.exit_name == "final" for _, p in after)


@pytest.fixture(scope="module")
def laddered(request, tmp_path_factory, cluster_bundle) -> tuple[Cluster, list[list[float]]]:
    """The cluster bundle with a ladder of three certified vectors (the chosen one last), served frozen."""
    from gati.bundle import read_manifest, revise_bundle
    from gati.runtime.plan import Plan
    out = tmp_path_factory.mktemp("laddered") / "tiny3"
    m = read_manifest(cluster_bundle)
    chosen = [e.threshold for e in m.plan.entries]
    levels = [[t + (1 - t) / 2 for t in chosen], [t + (1 - t) / 4 for t in chosen], chosen]  # each answers less
    revise_bundle(cluster_bundle, m.replace(plan=Plan(m.plan.entries, m.plan.mode, levels)), out=out)
    cluster = start_cluster(request, tmp_path_factory, out, sample_rate=1.0,
                            retrainer_options={"refit_every": 0, "refit_seconds": 0})
    return cluster, levels


def test_a_live_fallback_steps_one_rung_down_the_certified_vectors_not_straight_to_the_full_model(laddered,
                                                                                                  cluster_bundle,
                                                                                                  eval_images):
    cluster, levels = laddered
    wrong = cache_with_outputs(cluster_bundle / cache_file(1, "linear"), lambda v: torch.roll(v, 1, dims=0))
    predictor(cluster, "predictor-1").call("deploy", CacheUpdate(1, 1, wrong, 0.0))  # behind the retrainer's back
    with Load(cluster, eval_images, threads=2) as load:
        until(lambda: cluster.status("retrainer").counters.get("retrainer_live_fallbacks.pushed", 0) >= 1,
              timeout_s=60)
        n = len(load.answers)
        load.wait_for(n + 40)
        after = load.answers[n + 5:]
    assert not load.errors
    served = {c.cut: (c.threshold, c.version) for name in ("predictor-0", "predictor-1")
              for c in predictor(cluster, name).call("caches")}
    cuts = sorted(served)
    # one rung down (the retrainer's own caches, the wrong one replaced), not the full model everywhere
    assert [served[c][0] for c in cuts] == pytest.approx(levels[1]) and all(v >= 1 for _, v in served.values())
    assert any(p.exit_name != "final" for _, p in after)  # early exits go on
