"""The cluster configuration: parsing, relative paths, placement, and the errors a typo gets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gati.rpc.config import AUTO, ConfigError, load_config

BASE = {
    "bundle": "../bundles/r18",
    "secret_file": "secret",
    "timeouts_ms": {"connect": 500, "request": 3000},
    "hop_delay_ms": 0.5,
    "services": {
        "aggregator": {"host": "127.0.0.1", "port": 9090, "internal_port": 9096, "http_port": 9100,
                       "queue_size": 8, "workers": 2},
        "executor": {"host": "127.0.0.1", "port": 9091, "http_port": 9101},
        "predictors": [
            {"name": "p0", "host": "127.0.0.1", "port": 9092, "cuts": ["layer2.1", "layer3.0"]},
            {"name": "p1", "host": "127.0.0.1", "port": 9093, "cuts": "auto"},
        ],
        "index": {"host": "127.0.0.1", "port": 9094},
    },
}
PLAN = ["layer1.0", "layer2.1", "layer3.0", "layer4.1"]


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "conf" / "cluster.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def variant(**changes) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return raw


def test_parses_values_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.bundle == (tmp_path / "bundles" / "r18").resolve()  # relative to the config's folder
    assert cfg.timeouts.connect_ms == 500 and cfg.timeouts.call_ms == 2000 and cfg.timeouts.request_ms == 3000
    assert cfg.hop_delay_ms == 0.5 and cfg.max_message_bytes == 64 * 1024 * 1024
    assert cfg.aggregator.queue_size == 8 and cfg.aggregator.sample_rate == 0.05
    assert cfg.predictor("p1").cuts == AUTO and cfg.retrainer is None and cfg.index.port == 9094
    assert cfg.aggregator.http_port == 9100 and cfg.executor().http_port == 9101 and cfg.index.http_port is None
    assert cfg.secret_file == tmp_path / "conf" / "secret" and cfg.aggregator.callbacks.port == 9096
    assert not cfg.aggregator.internal and cfg.executor().internal and cfg.predictor("p0").internal
    assert cfg.connections.max_open == 1024 and cfg.connections.client_idle_s < cfg.connections.idle_s
    assert set(cfg.endpoints()) == {"aggregator", "executor", "p0", "p1", "index"}


def test_placement_resolves_auto_to_the_cuts_placed_nowhere_else(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.placement(PLAN) == {"p0": ["layer2.1", "layer3.0"], "p1": ["layer1.0", "layer4.1"]}


@pytest.mark.parametrize("changes, message", [
    ({"services__aggregator__prot": 1}, "unknown keys \\['prot'\\]"),
    ({"services__executor__port": 70000}, "port number"),
    ({"services__executor__port": 9090}, "both use 127.0.0.1:9090"),
    ({"services__index__http_port": 9101}, "both use 127.0.0.1:9101"),
    ({"services__aggregator__sample_rate": 1.5}, "sample_rate"),
    ({"services__aggregator__queue_size": 1}, "at least workers"),
    ({"services__predictors": []}, "non-empty list"),
    ({"hop_delay_ms": -1}, "hop_delay_ms"),
    ({"timeouts_ms": {"lookup": 0}}, "lookup must be positive"),
    ({"services__aggregator__internal_port": None}, "internal_port is required"),
    ({"services__aggregator__internal_port": 9091}, "both use 127.0.0.1:9091"),
    ({"secret_file": None}, "secret_file must be a str"),
    ({"services__retrainer": {"host": "127.0.0.1", "port": 9095, "alpha": 1.0}}, "alpha must be in \\(0, 1\\)"),
    ({"services__retrainer": {"host": "127.0.0.1", "port": 9095, "refit_every": -1}}, "refit_every must be at least 0"),
    ({"connections": {"max_open": 0}}, "max_open must be at least 1"),
    ({"connections": {"idle_s": 0}}, "idle_s must be positive"),
    ({"connections": {"maxopen": 5}}, "unknown keys \\['maxopen'\\]"),
    ({"timeouts_ms": {"request": 5000, "max_request": 1000}}, "may not exceed timeouts_ms.max_request"),
    ({"omp_wait_policy": "SPIN"}, "PASSIVE, ACTIVE or"),
    ({"services__executor__threads": -1}, "threads must be at least 0"),
    ({"services__executor__queue_size": 0}, "queue_size must be at least 1"),
    ({"services__index__max_keys": 0}, "max_keys must be at least 1"),
    ({"services__executors": [{"host": "127.0.0.1", "port": 9097}]}, "exactly one of services.executor"),
])
def test_bad_values_are_named(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, variant(**changes)))


def test_placement_errors_name_the_cut(tmp_path):
    cfg = load_config(write(tmp_path, variant(services__predictors__1__cuts=["layer2.1"])))
    with pytest.raises(ConfigError, match="layer2.1.*both p0 and p1"):
        cfg.placement(PLAN)
    cfg = load_config(write(tmp_path, variant(services__predictors__1__cuts=["layer1.0"])))
    with pytest.raises(ConfigError, match="layer4.1.*placed on no predictor"):
        cfg.placement(PLAN)
    cfg = load_config(write(tmp_path, variant(services__predictors__0__cuts=["layer9"])))
    with pytest.raises(ConfigError, match="layer9.*does not use"):
        cfg.placement(PLAN)


def test_the_secret_file_is_required(tmp_path):
    raw = variant()
    del raw["secret_file"]
    with pytest.raises(ConfigError, match="secret_file.*signs every call between services"):
        load_config(write(tmp_path, raw))


def test_missing_file_and_missing_predictor(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no predictor named 'p7'"):
        load_config(write(tmp_path, BASE)).predictor("p7")


def test_the_shipped_local_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "deploy" / "local.yaml")
    assert cfg.aggregator.port == 9090 and cfg.retrainer is not None and cfg.index is not None
    assert cfg.bundle.name == "r18" and cfg.bundle.parent.name == "bundles"
    http = [ep.http_port for ep in cfg.endpoints().values()]
    assert None not in http and len(set(http)) == len(http)  # every service has a health port of its own
    assert cfg.aggregator.internal_port == 9096 and cfg.secret_file.parent == cfg.log_dir


def test_executor_replicas_names_threads_and_deadlines(tmp_path):
    raw = variant(services__executors=[{"host": "127.0.0.1", "port": 9091, "http_port": 9101, "threads": 2},
                                       {"name": "gpu-b", "host": "127.0.0.1", "port": 9097, "queue_size": 8}],
                  timeouts_ms={"request": 3000, "max_request": 10000}, omp_wait_policy="passive")
    del raw["services"]["executor"]
    cfg = load_config(write(tmp_path, raw))
    assert [(e.name, e.port, e.queue_size, e.threads) for e in cfg.executors] == [
        ("executor-0", 9091, 64, 2), ("gpu-b", 9097, 8, 0)]
    assert cfg.executor("gpu-b").port == 9097 and set(cfg.endpoints()) >= {"executor-0", "gpu-b"}
    with pytest.raises(ConfigError, match="2 executors are configured: name one"):
        cfg.executor()
    with pytest.raises(ConfigError, match="no executor named 'x'"):
        cfg.service("executor", "x")
    assert cfg.timeouts.max_request_ms == 10000 and cfg.omp_wait_policy == "PASSIVE"
    # threads per role: 1 for the light services, the executor's for the model (--role all too)
    assert [cfg.threads(r, n) for r, n in (("aggregator", None), ("predictor", "p0"), ("index", None),
                                           ("executor", "executor-0"), ("all", None))] == [1, 1, 1, 2, 2]
    raw["services"]["predictors"][0]["name"] = "gpu-b"
    with pytest.raises(ConfigError, match="a name of its own.*gpu-b"):
        load_config(write(tmp_path, raw))


def test_the_openmp_environment_is_set_for_the_role_before_torch_is_imported(tmp_path, monkeypatch):
    from gati.rpc.commands import openmp_environment
    cfg = load_config(write(tmp_path, variant(services__executor__threads=3)))
    for var in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    openmp_environment(cfg, "executor", None)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "3"
    openmp_environment(cfg, "predictor", "p0")
    assert os.environ["OMP_NUM_THREADS"] == "1"
