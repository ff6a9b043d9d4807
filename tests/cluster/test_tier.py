"""The online neighbour tier in the cluster (gati/rpc/tier.py): the index service keeps it, the executor asks it
first at its cut and teaches it every request that ran to the end, the retrainer certifies its threshold with the
whole cascade and deploys it, and it survives the index being killed. The first tests need no processes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gati.learning.tier_config import TierConfig
from gati.rpc.config import ConfigError, parse_config
from gati.rpc.executor import _TierFirst
from gati.rpc.gen.gati_idl import NeighborIndex
from gati.rpc.gen.gati_idl.ttypes import Features, InvalidRequest, TierUpdate
from gati.rpc.metrics import IndexMetrics
from gati.rpc.samples import TierVerdictRing
from gati.rpc.tensors import to_tensor
from gati.rpc.tier import TierServer
from gati.rpc.transport import Limits, Pool
from gati.reducer_names import reduced_shape
from gati.runtime.cascade import Done, Verdict
from gati.measure.workloads import Repeat
from tests.cluster.conftest import cluster_ports, free_ports, start_cluster, write_config
from tests.cluster.helpers import Cluster, Load, References, until

CONFIG = TierConfig(cut=0, reducer="gap", capacity=8, k=2)
SHAPE, CLASSES = (4, 2, 2), 3


def unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def server(folder=None) -> TierServer:
    return TierServer(CONFIG, SHAPE, CLASSES, "stem", "b" * 64, IndexMetrics(), folder)


def judge(tier: TierServer, vector: np.ndarray):
    return tier.judge(Features(7, 0, to_tensor(vector[None])))


def test_the_tier_answers_only_once_a_threshold_is_deployed_and_only_versions_that_grow():
    tier = server()
    a = unit(1, 0, 0, 0)
    assert judge(tier, a).label == -1 and not judge(tier, a).hit  # empty
    tier.remember(to_tensor(np.stack([a, a])), to_tensor(np.array([2, 2], np.int64)))
    reply = judge(tier, a)
    assert (reply.label, reply.hit, reply.cache_version) == (2, False, 0) and reply.confidence == pytest.approx(1.0)
    tier.deploy(TierUpdate(1, 0.9))
    assert judge(tier, a).hit and judge(tier, a).cache_version == 1
    assert not judge(tier, unit(0, 1, 0, 0)).hit  # far from everything stored
    with pytest.raises(InvalidRequest):
        tier.deploy(TierUpdate(1, 0.5))  # not above the version served
    with pytest.raises(InvalidRequest):
        tier.deploy(TierUpdate(2, float("nan")))
    tier.deploy(TierUpdate(2, math.inf))
    assert not judge(tier, a).hit and tier.info().version == 2


def test_malformed_tier_messages_change_nothing():
    tier = server()
    a = unit(1, 0, 0, 0)
    for vectors, labels in ((np.ones((1, 4), np.float32), [0]),      # not unit vectors
                            (a[None].astype(np.float64), [0]),         # not float32
                            (np.stack([a, a]), [0]),                   # one label for two vectors
                            (a[None], [CLASSES]),                      # not a class
                            (np.full((1, 4), np.nan, np.float32), [0])):
        tier.remember(to_tensor(np.asarray(vectors)), to_tensor(np.array(labels, np.int64)))
    assert tier.tier.size == 0
    assert judge(tier, np.ones(4, np.float32)).error  # no verdict: the executor counts the cut as missing
    assert judge(tier, unit(1, 0, 0)).error


def test_the_tier_is_bounded_and_its_version_and_vectors_survive_a_restart(tmp_path):
    tier = server(tmp_path)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tier.remember(to_tensor(vectors), to_tensor(rng.integers(CLASSES, size=20)))
    assert tier.tier.size == CONFIG.capacity  # least recently used replaced beyond it
    tier.deploy(TierUpdate(3, 0.7))
    tier.snapshot()
    again = server(tmp_path)
    assert (again.info().version, again.info().threshold, again.tier.size) == (3, 0.7, CONFIG.capacity)
    other = TierServer(CONFIG, SHAPE, CLASSES, "stem", "c" * 64, IndexMetrics(), tmp_path)  # another bundle's
    assert other.info().version == 0 and other.info().threshold == math.inf


class FakeSource:
    tier_verdict = None
    by_tier = False


def test_at_the_tiers_cut_its_hit_answers_else_the_cache_else_a_miss_and_its_silence_is_missing():
    hit, miss = Verdict(0, 1, 0.95, True), Verdict(0, 2, 0.3, False)
    cache = Done(Verdict(0, 0, 0.99, True))
    source = FakeSource()
    assert _TierFirst(source, Done(hit), cache).verdict() == hit and source.by_tier
    source = FakeSource()
    assert _TierFirst(source, Done(miss), cache).verdict() == cache.value and not source.by_tier
    assert (source.tier_verdict.label, source.tier_verdict.confidence) == (2, 0.3)  # kept for the retrainer
    assert _TierFirst(FakeSource(), Done(miss), None).verdict() == Verdict(0, 2, 0.3, False)
    assert _TierFirst(FakeSource(), Done(None), cache).verdict() is None  # missing: the full model answers


def test_the_verdict_ring_reads_back_by_number_and_forgets_the_oldest():
    ring = TierVerdictRing(3)
    for n in range(5):
        ring.put(n, n % CLASSES, n / 10)
    labels, conf = ring.get(np.array([4, 0, 2]))
    assert labels.tolist() == [1, -1, 2] and conf.tolist() == pytest.approx([0.4, 0.0, 0.2])
    again = TierVerdictRing(3)
    again.restore(ring.arrays())
    assert again.get(np.array([2, 3, 4]))[0].tolist() == [2, 0, 1]


def test_the_config_names_the_tier_and_it_needs_the_index(tmp_path):
    raw = {"bundle": "b", "secret_file": "s", "tier": {"cut": 1, "capacity": 512},
           "services": {"aggregator": {"host": "h", "port": 1, "internal_port": 2},
                        "executor": {"host": "h", "port": 3},
                        "predictors": [{"host": "h", "port": 4}],
                        "index": {"host": "h", "port": 5}}}
    cfg = parse_config(raw, tmp_path / "c.yaml")
    assert cfg.tier == TierConfig(cut=1, capacity=512)
    with pytest.raises(ConfigError, match="index"):
        parse_config({**raw, "services": {k: v for k, v in raw["services"].items() if k != "index"}},
                     tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_config({**raw, "tier": {"cut": 0, "size": 3}}, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="capacity"):
        parse_config({**raw, "tier": {"capacity": 0}}, tmp_path / "c.yaml")


# ---- real processes ---------------------------------------------------------------------------------------

TIER = {"cut": 0, "capacity": 256, "k": 4}


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    # Every request sampled, so that each is a joint sample and the tier's verdicts reach the retrainer; small
    # review windows and a low target so that the tiny model's repeated traffic certifies the tier within seconds.
    return start_cluster(request, tmp_path_factory, cluster_bundle, sample_rate=1.0, state=True, tier=TIER,
                         index_bounds={"snapshot_s": 1.0},
                         retrainer_options={"refit_every": 80, "select_samples": 40, "certify_samples": 100,
                                            "target": 0.9, "resync_s": 1.0})


def tier_info(cluster: Cluster):
    ep = cluster.cfg.index
    return Pool(NeighborIndex.Client, ep.host, ep.port, Limits(call_s=10, secret=cluster.secret)).call("tier")


def test_repeated_traffic_certifies_the_tier_which_then_answers_near_duplicates(cluster, cluster_bundle, tiny_data):
    from gati.data import load_split
    images = Repeat(n=600, working_set=12, seed=1).generate(load_split("imagefolder", tiny_data[0],
                                                                        "test:eval")).images
    assert tier_info(cluster).version == 0 and tier_info(cluster).threshold == math.inf
    with Load(cluster, images, threads=2) as load:
        until(lambda: tier_info(cluster).version >= 1 and math.isfinite(tier_info(cluster).threshold),
              timeout_s=180)
        start = len(load.answers)
        load.wait_for(start + 300, timeout_s=120)
    assert not load.errors
    late = load.answers[start:]
    by_tier = [(i, p) for i, p in late if p.exit_name == "tier:stem"]
    assert len(by_tier) > len(late) // 10, {p.exit_name for _, p in late}
    base = References.of(cluster_bundle, images).base
    assert np.mean([p.label == base[i] for i, p in by_tier]) >= 0.9
    assert all(p.exit_cut == 0 for _, p in by_tier)
    index = cluster.metrics("index")
    assert 0 < index[("gati_tier_vectors", ())] <= TIER["capacity"]
    assert index[("gati_tier_judged_total", (("outcome", "hit"),))] >= len(by_tier)
    assert cluster.status("retrainer").gauges["cache_version.tier"] == tier_info(cluster).version

    kept = tier_info(cluster)
    until(lambda: (cluster.cfg.state_folder("index") / "tier" / "tier.npz").is_file(), timeout_s=10)
    cluster.kill("index")  # SIGKILL: its record was written before deploy_tier answered, its vectors by snapshot
    cluster.restart("index")
    resumed = tier_info(cluster)
    assert (resumed.version, resumed.threshold) == (kept.version, kept.threshold) and resumed.size > 0


def test_the_index_keeps_the_tier_without_torch_when_its_plan_serves_no_knn_cache(tmp_path, cluster_bundle):
    """The index holds FAISS indexes and the online tier in numpy; only a plan's kNN caches (torch files) make it
    import torch. Started alone on the cluster bundle without its kNN exit, it remembers, judges, deploys a
    threshold and snapshots its vectors with no torch in the process."""
    from pathlib import Path

    from gati.bundle import read_manifest, revise_bundle
    from gati.rpc import launch
    from gati.rpc.auth import Secret
    from gati.rpc.config import load_config
    from gati.runtime.plan import Plan

    if not Path("/proc/self/maps").exists():
        pytest.skip("reads /proc")
    m = read_manifest(cluster_bundle)
    keep = [j for j, e in enumerate(m.plan.entries) if e.variant != "knn"]
    assert len(keep) < len(m.plan.entries), "the cluster bundle serves a kNN cache: what this test takes away"
    plan = Plan([m.plan.entries[j] for j in keep], m.plan.mode,
                [[level[j] for j in keep] for level in m.plan.certified_levels])
    bundle = tmp_path / "no-knn"
    revise_bundle(cluster_bundle, m.replace(plan=plan), out=bundle)
    cfg = load_config(write_config(tmp_path / "cluster.yaml", bundle, free_ports(cluster_ports()), state=True,
                                   tier=TIER))
    launch._prepare(cfg)  # the secret, as a cluster start makes it
    proc = launch.spawn(cfg, "index", "index")
    try:
        launch.wait_ready([proc], timeout_s=60, secret=Secret.load(cfg.secret_file))
        index = Pool(NeighborIndex.Client, cfg.index.host, cfg.index.port, Limits(call_s=10, secret=Secret.load(
            cfg.secret_file)))
        a = np.zeros((1, math.prod(reduced_shape(TierConfig(**TIER).reducer, tuple(m.cut_shapes[0])))), np.float32)
        a[0, 0] = 1.0
        index.call("remember", to_tensor(np.repeat(a, 4, axis=0)), to_tensor(np.full(4, 2, np.int64)))  # oneway
        until(lambda: index.call("tier").size == 4, timeout_s=10)
        index.call("deploy_tier", TierUpdate(1, 0.5))
        reply = index.call("judge", Features(1, 0, to_tensor(a)))
        assert (reply.label, reply.hit) == (2, True)
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        launch.stop_procs([proc], grace_s=5)
    assert (cfg.state_folder("index") / "tier" / "tier.npz").is_file()  # its snapshot, written as it drained
