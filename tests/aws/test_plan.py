"""The plan and the description file, with no AWS at all."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from gati.cloud.deployment import Resolved, build_plan, placeholders
from gati.cloud.layout import nodes
from gati.cloud.prices import HOURLY_USD_US_EAST_1
from gati.cloud.spec import DeployError, load_spec
from gati.cloud.wait import Endpoint, wait_for_ping
from gati.errors import CheckpointError, GatiError
from tests.aws.conftest import CIDR, Recorder, fake_manifest, make_spec
from tests.legacy import as_format_1

ROOT = Path(__file__).resolve().parents[2]


def load_cli() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_aws", ROOT / "deploy" / "aws.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_description_has_the_issue_defaults():
    spec = load_spec(ROOT / "deploy" / "aws.yaml")
    types = {n.name: (n.instance_type, n.device) for n in nodes(spec)}
    assert types == {"aggregator": ("c5.xlarge", "cpu"), "executor": ("p3.2xlarge", "cuda"),
                     "retrainer": ("c5.2xlarge", "cpu"), "predictor-0": ("c5.xlarge", "cpu"),
                     "predictor-1": ("c5.xlarge", "cpu")}
    assert spec.allowed_cidr == "auto"   # never open to the world by default
    assert spec.ami.ssm_parameter.startswith("/aws/service/deeplearning/")


def test_dry_run_prints_the_whole_plan_without_calling_aws(monkeypatch, capsys):
    import boto3
    import botocore.session

    def no_aws(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("dry run must not create an AWS session")

    monkeypatch.setattr(boto3, "Session", no_aws)
    monkeypatch.setattr(botocore.session, "Session", no_aws)
    recorder = Recorder()
    rc = load_cli().main(["deploy", "--dry-run", "--config", str(ROOT / "deploy" / "aws.yaml"),
                          "--name", "drytest"], recorder.hooks())
    out = "\n".join(recorder.lines)
    assert rc == 0
    assert "hourly cost: ~$3.91/hour" in out     # 0.17 + 3.06 + 0.34 + 2 * 0.17
    assert out.count("#!/bin/bash") == 5 and out.count("gati plan --bundle") == 0  # no node re-plans
    assert "tcp 9096  from self" in out and "tcp 9096  from auto" not in out  # callbacks: internal only
    for piece in ("security group gati-drytest", "tcp 9090  from self", "tcp 22    from auto", "deployment-secret",
                  "IAM role and instance profile gati-drytest-us-east-1", "s3:GetObject",
                  "S3 bucket gati-drytest-<account-id>-us-east-1", "p3.2xlarge"):
        assert piece in out
    assert recorder.pinged == []


def test_every_type_is_overridable_and_gpu_follows_the_type():
    spec = make_spec(roles={"executor": {"type": "g5.xlarge"}, "aggregator": {"type": "c5.2xlarge"},
                            "retrainer": {"count": 0}, "index": {"type": "m5.xlarge"},
                            "predictors": {"type": "c6i.xlarge", "count": 1,
                                           "placement": ["auto"]}})
    got = {n.name: (n.instance_type, n.device, n.roles) for n in nodes(spec)}
    assert got == {"aggregator": ("c5.2xlarge", "cpu", ("aggregator",)),
                   "executor": ("g5.xlarge", "cuda", ("executor",)),
                   "index": ("m5.xlarge", "cpu", ("index",)),
                   "predictor-0": ("c6i.xlarge", "cpu", ("predictor",))}
    plan = build_plan(spec, placeholders(spec))
    assert "retrainer" not in plan.instance("aggregator").config["services"]
    cpu_exec = make_spec(roles={"executor": {"type": "c5.4xlarge"}})
    exec_plan = build_plan(cpu_exec, placeholders(cpu_exec)).instance("executor")
    assert exec_plan.config["device"] == "cpu" and "gati plan" not in exec_plan.user_data


def test_cost_uses_the_table_and_says_what_it_cannot_price():
    spec = make_spec(roles={"executor": {"type": "p9.huge"}, "index": {"colocate": "aggregator"},
                            "predictors": {"type": "c5.xlarge", "hourly_usd": 0.5,
                                           "placement": [["layer1.0"], "auto"]}})
    cost = build_plan(spec, placeholders(spec)).cost
    assert cost.unknown_types == ("p9.huge",)
    # aggregator (+ index) and retrainer from the table, two predictors at the override
    table = HOURLY_USD_US_EAST_1
    assert cost.known_usd == pytest.approx(table["c5.xlarge"] + table["c5.2xlarge"] + 2 * 0.5)
    assert "unpriced: p9.huge" in cost.describe()


@pytest.mark.parametrize("change, message", [
    ({"allowed_cidr": None}, "allowed_cidr"),
    ({"allowed_cidr": "10.0.0.1/8"}, "not a CIDR block"),
    ({"name": "Bad_Name"}, "name"),
    ({"ami": {"id": "ami-1", "ssm_parameter": "/x"}}, "exactly one"),
    ({"colour": "blue"}, "unknown key"),
    ({"roles": {"aggregator": {"count": 2}}}, "exactly one instance"),
    ({"roles": {"executor": {"count": 0}}}, "at least one instance"),
    ({"roles": {"executor": {"colocate": "aggregator"}}}, "at least one instance of its own"),
    ({"roles": {"index": {"colocate": "predictors"}}}, "colocate"),
    ({"roles": {"predictors": {"placement": ["auto", "auto"]}}}, "at most one 'auto'"),
    ({"roles": {"predictors": {"placement": [["layer1.0"], ["layer1.0"]]}}}, "two predictors"),
    ({"roles": {"predictors": {"count": 3, "placement": ["auto"]}}}, "count 3"),
    ({"roles": {"index": {"colocate": "aggregator"}}, "ports": {"index": 9090}}, "distinct"),
    ({"cluster": {"sample_rate": 2}}, "sample_rate"),
    ({"cluster": {"timeouts_ms": {"call": 0}}}, "timeouts_ms.call"),
])
def test_bad_descriptions_fail_with_the_key_named(change, message):
    with pytest.raises(DeployError, match=message):
        nodes(make_spec(**change))


def test_yaml_on_key_pitfall_is_caught(tmp_path):
    # YAML 1.1 reads a bare `on` as true: the error names it instead of crashing.
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "region": "us-east-1", "allowed_cidr": CIDR,
                                    "ami": {"id": "ami-1"}}) + "roles:\n  index: {on: aggregator}\n")
    with pytest.raises(DeployError, match="unknown key.*roles.index.True"):
        load_spec(path)


def test_wait_for_ping_retries_until_the_deadline():
    now = [0.0]
    answers = iter([False, False, True])
    calls: list[Endpoint] = []

    def ping(endpoint: Endpoint, timeout_s: float) -> bool:
        calls.append(endpoint)
        return next(answers)

    def sleep(s: float) -> None:
        now[0] += s

    ep = Endpoint("10.0.0.5", 9090)
    assert wait_for_ping(ep, 100, ping, sleep, lambda: now[0], interval_s=10)
    assert calls == [ep] * 3 and now[0] == 20
    now[0] = 0.0
    assert not wait_for_ping(ep, 25, lambda e, t: False, sleep, lambda: now[0], interval_s=10)
    assert now[0] == 20   # gave up instead of sleeping past the deadline


def test_a_bundle_ships_as_it_is_and_an_old_one_gets_its_checkpoint_inside(tmp_path, bundle):
    import tarfile

    from gati.cloud.artifacts import pack_bundle

    with tarfile.open(pack_bundle(bundle, tmp_path / "b.tar.gz")) as tar:
        assert tar.extractfile("manifest.yaml").read() == (bundle / "manifest.yaml").read_bytes()
        assert tar.extractfile("checkpoint.pt").read() == b"weights"

    ckpt = tmp_path / "models" / "r18.pt"  # format 1: the checkpoint by an absolute path
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"old weights")
    old = tmp_path / "old"
    old.mkdir()
    written = yaml.safe_dump(as_format_1(yaml.safe_load(fake_manifest("checkpoint.pt").to_yaml()), str(ckpt)))
    (old / "manifest.yaml").write_text(written)
    with tarfile.open(pack_bundle(old, tmp_path / "c.tar.gz")) as tar:
        shipped = yaml.safe_load(tar.extractfile("manifest.yaml").read())
        assert tar.extractfile("checkpoint.pt").read() == b"old weights"
    assert shipped["checkpoint"]["path"] == "checkpoint.pt" and shipped["checkpoint"]["source"] == str(ckpt)
    assert (old / "manifest.yaml").read_text() == written  # left as it was
    ckpt.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        pack_bundle(old, tmp_path / "d.tar.gz")


def test_instance_configs_are_read_by_the_services_own_parser():
    config = pytest.importorskip("gati.rpc.config")
    spec = make_spec()
    hosts = {n.name: f"172.31.0.{10 + i}" for i, n in enumerate(nodes(spec))}
    plan = build_plan(spec, Resolved(
        account_id="123456789012", ami_id="ami-1", subnet_id="subnet-1", hosts=hosts,
        wheel_key="gati-0.1.0-py3-none-any.whl"))
    for inst in plan.instances:
        cfg = config.parse_config(dict(inst.config), Path("/opt/gati/config.yaml"))
        assert cfg.aggregator.host == hosts["aggregator"] and cfg.aggregator.port == 9090
        assert cfg.aggregator.internal_port == 9096 and str(cfg.secret_file) == "/opt/gati/secret"
        assert cfg.executor().host == hosts["executor"] and cfg.executor().http_port == 9101
        assert [(p.name, p.host, p.cuts) for p in cfg.predictors] == [
            ("predictor-0", hosts["predictor-0"], ("layer2.1", "layer3.0")),
            ("predictor-1", hosts["predictor-1"], "auto")]
        assert cfg.index.host == hosts["aggregator"] and cfg.device == inst.node.device


def test_a_config_the_services_would_refuse_fails_the_plan_not_the_boot():
    spec = make_spec(cluster={"queue_size": 2, "workers": 4})  # every field valid on its own
    hosts = {n.name: f"172.31.0.{10 + i}" for i, n in enumerate(nodes(spec))}
    with pytest.raises(GatiError, match="queue_size"):
        build_plan(spec, Resolved(account_id="123456789012", ami_id="ami-1", subnet_id="subnet-1",
                                  hosts=hosts, wheel_key="gati-0.1.0-py3-none-any.whl"))


def test_executor_replicas_get_an_instance_each_and_one_cluster_config():
    config = pytest.importorskip("gati.rpc.config")
    spec = make_spec(roles={"executor": {"type": "g5.xlarge", "count": 2}, "retrainer": {"colocate": "executor"},
                            "index": {"colocate": "aggregator"},
                            "predictors": {"placement": ["auto"]}})
    assert [(n.name, n.roles, n.device) for n in nodes(spec)] == [
        ("aggregator", ("aggregator", "index"), "cpu"), ("executor-0", ("executor", "retrainer"), "cuda"),
        ("executor-1", ("executor",), "cuda"), ("predictor-0", ("predictor",), "cpu")]
    plan = build_plan(spec, placeholders(spec))
    cfg = config.parse_config(dict(plan.instance("executor-1").config), Path("/opt/gati/config.yaml"))
    assert [(e.name, e.host, e.port, e.http_port) for e in cfg.executors] == [
        ("executor-0", "<private-ip:executor-0>", 9091, 9101), ("executor-1", "<private-ip:executor-1>", 9091, 9101)]
    assert cfg.retrainer.host == "<private-ip:executor-0>" and cfg.retrainer.http_port == 9105
    for name in ("executor-0", "executor-1"):  # each unit runs its own replica
        assert f"--role executor --config /opt/gati/config.yaml --name {name}" in plan.instance(name).user_data
    assert plan.cost.known_usd == pytest.approx(sum(HOURLY_USD_US_EAST_1[t] for t in
                                                    ("c5.xlarge", "g5.xlarge", "g5.xlarge", "c5.xlarge")))
