"""State that survives restarts (gati/rpc/durable.py), with real processes killed by SIGKILL.

One cluster with a state_dir, the retrainer snapshotting samples and comparing versions every second; the
tests run in order and each starts from the versions the one before left:

- a killed retrainer restarts with its samples (at most one snapshot period's lost) and its versions, and its
  next deploy is numbered above them and accepted;
- a killed predictor restarts serving the version deployed to it (its lookups are the new cache's), a kNN
  version loaded into the neighbour index again;
- a retrainer whose state is wiped adopts the predictor's newer version, so its next deploy is above it;
- a predictor whose state is wiped gets the retrainer's versions pushed again.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gati.bundle import cache_file
from gati.rpc.cachefile import cache_from_bytes
from gati.rpc.gen.gati_idl import Predictor, Retrainer
from gati.rpc.gen.gati_idl.ttypes import CacheUpdate, Features
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import Limits, Pool
from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import Cluster, cache_with_outputs, until
from tests.cluster.test_chaos import block1_samples

SNAPSHOT_S = RESYNC_S = 1.0


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    return start_cluster(request, tmp_path_factory, cluster_bundle, state=True,
                         retrainer_options={"snapshot_s": SNAPSHOT_S, "resync_s": RESYNC_S})


@pytest.fixture(scope="module")
def samples(cluster_bundle, eval_images) -> list:
    return block1_samples(cluster_bundle, eval_images[np.arange(50) % len(eval_images)])


def retrainer(cluster: Cluster) -> Pool:
    """A new pool each time: the process behind the port may have been restarted."""
    ep = cluster.cfg.retrainer
    return Pool(Retrainer.Client, ep.host, ep.port, Limits(call_s=60, secret=cluster.secret))


def predictor(cluster: Cluster, name: str = "predictor-1") -> Pool:
    ep = cluster.cfg.predictor(name)
    return Pool(Predictor.Client, ep.host, ep.port, Limits(call_s=30, secret=cluster.secret))


def held(cluster: Cluster) -> float:
    return cluster.status("retrainer").gauges.get("retrainer_samples_held.block1", -1)


def served(cluster: Cluster) -> dict[str, int]:
    return {c.cut_name: c.version for c in predictor(cluster).call("caches")}


def bundle_blob(bundle: Path) -> bytes:
    """block1's cache file: always no worse than itself, so the retrainer's gate deploys it."""
    return (bundle / cache_file(1, "linear")).read_bytes()


def test_a_killed_retrainer_restarts_with_its_samples_and_versions(cluster, cluster_bundle, samples):
    retrainer(cluster).send("add_samples", samples[:40], None)
    until(lambda: held(cluster) == 40)
    first = retrainer(cluster).call("propose", 1, bundle_blob(cluster_bundle))
    assert first.deployed and first.version == 1
    # The bound: samples held for a snapshot period (and its write) are on disk; the 10 sent just before
    # the SIGKILL may be lost.
    time.sleep(SNAPSHOT_S + 1.0)
    retrainer(cluster).send("add_samples", samples[40:], None)
    until(lambda: held(cluster) == 50)
    cluster.kill("retrainer")
    cluster.restart("retrainer")
    status = cluster.status("retrainer")
    assert 40 <= status.gauges["retrainer_samples_held.block1"] <= 50
    assert status.gauges["cache_version.block1"] == 1.0
    second = retrainer(cluster).call("propose", 1, bundle_blob(cluster_bundle))
    assert second.deployed and second.version == 2, second.message
    assert served(cluster)["block1"] == 2
    assert cluster.status("predictor-1").gauges["cache_version.block1"] == 2.0


def test_a_killed_predictor_restarts_serving_the_deployed_version(cluster, cluster_bundle, eval_images, tmp_path):
    blob = sharper(cluster_bundle / cache_file(2, "mlp"))
    predictor(cluster).call("deploy", CacheUpdate(2, 1, blob))
    cluster.kill("predictor-1")
    cluster.restart("predictor-1")
    assert served(cluster) == {"block1": 2, "block2": 1}
    assert cluster.status("predictor-1").gauges["cache_version.block2"] == 1.0
    feats = torch.from_numpy(cut_features(cluster_bundle, eval_images[:20], 2))
    replies = [predictor(cluster).call("lookup", Features(i, 2, to_tensor(feats[i:i + 1].numpy())))
               for i in range(len(feats))]
    labels, conf = cache_from_bytes(blob).predict(feats)
    assert [(r.label, r.cache_version) for r in replies] == [(int(label), 1) for label in labels]
    assert np.allclose([r.confidence for r in replies], conf.numpy(), atol=1e-5)
    _, bundle_conf = cache_from_bytes((cluster_bundle / cache_file(2, "mlp")).read_bytes()).predict(feats)
    assert not np.allclose(conf.numpy(), bundle_conf.numpy(), atol=1e-3)  # not the bundle's version 0


def test_a_killed_knn_predictor_loads_its_version_into_the_index_again(cluster, cluster_bundle, eval_images):
    blob = (cluster_bundle / cache_file(0, "knn")).read_bytes()
    predictor(cluster, "predictor-0").call("deploy", CacheUpdate(0, 1, blob))
    cluster.kill("predictor-0")
    cluster.restart("predictor-0")
    assert cluster.status("index").gauges["index_vectors.stem@v1"] > 0
    feats = torch.from_numpy(cut_features(cluster_bundle, eval_images[:10], 0))
    replies = [predictor(cluster, "predictor-0").call("lookup", Features(i, 0, to_tensor(feats[i:i + 1].numpy())))
               for i in range(len(feats))]
    labels, _ = cache_from_bytes(blob).predict(feats)
    assert [(r.error, r.cache_version, r.label) for r in replies] == [("", 1, int(label)) for label in labels]


def test_a_retrainer_that_lost_its_state_adopts_the_predictors_versions(cluster, cluster_bundle, samples):
    cluster.kill("retrainer")
    shutil.rmtree(cluster.cfg.state_folder("retrainer"))
    cluster.restart("retrainer")
    until(lambda: cluster.status("retrainer").gauges.get("cache_version.block1") == 2.0, timeout_s=10)
    until(lambda: cluster.status("retrainer").gauges.get("cache_version.block2") == 1.0, timeout_s=10)
    assert cluster.status("retrainer").counters.get("retrainer_resyncs.block1.adopted") == 1
    retrainer(cluster).send("add_samples", samples[:40], None)
    until(lambda: held(cluster) == 40)
    result = retrainer(cluster).call("propose", 1, bundle_blob(cluster_bundle))
    assert result.deployed and result.version == 3, result.message
    assert served(cluster)["block1"] == 3


def test_a_predictor_that_lost_its_state_gets_the_retrainers_versions_again(cluster):
    cluster.kill("predictor-1")
    shutil.rmtree(cluster.cfg.state_folder("predictor-1"))
    cluster.restart("predictor-1")
    until(lambda: served(cluster) == {"block1": 3, "block2": 1}, timeout_s=10)
    counters = cluster.status("retrainer").counters
    assert counters.get("retrainer_resyncs.block1.pushed") == 1 and counters.get("retrainer_resyncs.block2.pushed") == 1


def sharper(path: Path) -> bytes:
    """The cache at `path` with its output logits doubled: the same labels, other confidences."""
    return cache_with_outputs(path, lambda v: v * 2)


def cut_features(bundle_path: Path, images: np.ndarray, cut: int) -> np.ndarray:
    """What the executor sends a predictor for `cut`: the cache's reduced input."""
    from gati.bundle import load_bundle
    bundle = load_bundle(bundle_path)
    with torch.inference_mode():
        x = bundle.preprocess(images)
        for stage in bundle.staged.stages[:cut + 1]:
            x = stage(x)
        return bundle.caches[cut].reduce(x).numpy()
