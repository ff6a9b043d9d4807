"""Fixtures for the cluster tests: a re-planned tiny bundle, free ports, and clusters of real processes.

Every process a test starts is stopped by a finalizer (its process group is signalled), whatever
the test's outcome.
"""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.cluster.helpers import Cluster, References
from tests.threads import torch_threads


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def cluster_bundle(tiny_bundle: Path, tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a plan over three cuts: kNN (served through the index), linear, MLP.

    Thresholds come from the calibration images' confidences, so that a share of the requests hits
    at each cut and the rest reach the full model, whatever the tiny model learned. The kNN cache
    votes over 150 neighbours (the bundle's votes over 10 and is unanimous on these easy images).
    """
    from gati.bundle import cache_file, load_bundle, read_manifest, revise_bundle
    from gati.cache import load_cache
    from gati.data import load_split
    from gati.runtime.plan import Plan, PlanEntry
    with torch_threads(1):  # as the services run
        out = tmp_path_factory.mktemp("cluster-bundle") / "tiny3"
        revise_bundle(tiny_bundle, read_manifest(tiny_bundle), out=out)
        edit_cache_file(out / cache_file(0, "knn"), lambda blob: blob["config"].update(k=150))
        base = load_bundle(out)
        calib = load_split("imagefolder", tiny_data[0], "test:calib")
        with torch.inference_mode():
            acts, x = [], base.preprocess(calib.images)
            for stage in base.staged.stages[:-1]:
                x = stage(x)
                acts.append(x)
        entries, alive = [], torch.ones(len(calib.images), dtype=torch.bool)
        for cut, variant, share in ((0, "knn", 0.3), (1, "linear", 0.3), (2, "mlp", 0.4)):
            cache = load_cache(out / cache_file(cut, variant))
            _, conf = cache(acts[cut])
            threshold = float(np.quantile(conf[alive].numpy(), 1 - share))
            alive &= conf < threshold
            entries.append(PlanEntry(cut, base.staged.cuts[cut], variant, threshold))
        revise_bundle(out, read_manifest(out).replace(plan=Plan(entries, "sync")))
    return out


def edit_cache_file(path: Path, edit) -> None:
    """Change a saved cache through its file format ({format, config, state}): `edit(blob)` in place."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    edit(blob)
    torch.save(blob, path)


@pytest.fixture(scope="session")
def eval_images(tiny_data) -> np.ndarray:
    from gati.data import load_split
    return load_split("imagefolder", tiny_data[0], "test:eval").images


@pytest.fixture(scope="session")
def references(cluster_bundle: Path, eval_images: np.ndarray) -> References:
    return References.of(cluster_bundle, eval_images)


CLUSTER_PORTS = 13  # a Thrift and an HTTP port for each of six services, and the aggregator's callbacks


def cluster_ports(executors: int = 1) -> int:
    """Free ports a cluster needs: CLUSTER_PORTS, and two more for each further executor replica."""
    return CLUSTER_PORTS + 2 * (executors - 1)


def write_config(path: Path, bundle: Path, ports: list[int], *, index: bool = True, retrainer: bool = True,
                 sample_rate: float = 0.0, queue_size: int = 16, workers: int = 4, lookup_ms: float = 300,
                 request_ms: float = 5000, max_request_ms: float | None = None, executor_workers: int = 1,
                 lookahead: int = -1, executors: int = 1, connections: dict | None = None,
                 index_bounds: dict | None = None, state: bool = False, retrainer_options: dict | None = None,
                 tier: dict | None = None) -> Path:
    """`ports`: `cluster_ports(executors)` free ports: six for Thrift, six for HTTP, one for the aggregator's
    callbacks, then a Thrift and an HTTP port for each executor replica after the first. One replica is
    written as `executor:`, several as `executors:` (named executor-0, executor-1, ...). `state`: a state_dir
    (`state/` beside the config) that the services' versions and samples survive restarts in. `tier`: the online
    neighbour tier's settings (the config's `tier`)."""
    def at(i: int) -> dict:
        return {"host": "127.0.0.1", "port": ports[i], "http_port": ports[6 + i]}

    executor = {"workers": executor_workers, "threads": 1, "lookahead": lookahead}
    replicas = [{**at(1), **executor}] + [{"host": "127.0.0.1", "port": ports[13 + 2 * k],
                                           "http_port": ports[14 + 2 * k], **executor} for k in range(executors - 1)]
    services = {
        "aggregator": {**at(0), "internal_port": ports[12], "queue_size": queue_size, "workers": workers,
                       "sample_rate": sample_rate},
        **({"executor": replicas[0]} if executors == 1 else {"executors": replicas}),
        "predictors": [{"name": "predictor-0", **at(2), "cuts": ["stem"]},
                       {"name": "predictor-1", **at(3), "cuts": "auto"}],
    }
    if index:
        services["index"] = {**at(4), **(index_bounds or {})}
    if retrainer:
        services["retrainer"] = {**at(5), "min_samples": 20, **(retrainer_options or {})}
    timeouts = {"connect": 500, "call": 3000, "request": request_ms, "lookup": lookup_ms}
    if max_request_ms is not None:
        timeouts["max_request"] = max_request_ms
    raw = {"bundle": str(bundle), "log_dir": str(path.parent / "logs"), "secret_file": str(path.parent / "secret"),
           "timeouts_ms": timeouts, "max_message_mb": 1, "services": services}
    if connections:
        raw["connections"] = connections
    if state:
        raw["state_dir"] = str(path.parent / "state")
    if tier is not None:
        raw["tier"] = tier
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, bundle: Path,
                  **options) -> Cluster:
    """A started Cluster of real processes, stopped by a finalizer of the requesting fixture's scope."""
    folder = tmp_path_factory.mktemp("cluster")
    ports = free_ports(cluster_ports(options.get("executors", 1)))
    cluster = Cluster(write_config(folder / "cluster.yaml", bundle, ports, **options))
    request.addfinalizer(cluster.stop)
    cluster.start()
    return cluster
