"""Offline AWS fixtures: moto's mock_aws, fake credentials, no config files, fake wheel.

moto's EC2 knows availability zones (and default subnets) only for real region names, so the
dedicated test region is a real name that GATI's defaults never use; with mock_aws active,
fake keys, and the shared config/credentials files pointed at nothing, no call can reach AWS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import boto3
import pytest
from moto import mock_aws

from gati.cloud.hooks import Hooks
from gati.cloud.spec import DeploySpec, parse_spec
from gati.cloud.wait import Endpoint

REGION = "ap-southeast-4"
FAKE_KEY_ID = "AKIAGATITESTFAKEKEY0"
FAKE_SECRET = "gati-test-fake-secret-never-real-0123456789"
AMI_PARAMETER = "/gati/test/ami-id"
CIDR = "198.51.100.7/32"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # ~1 s per test saved


@pytest.fixture
def session(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        s = boto3.Session(region_name=REGION)
        image = s.client("ec2").register_image(
            Name="gati-test-dlami", RootDeviceName="/dev/sda1", BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 120}}])["ImageId"]
        s.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=image, Type="String")
        yield s


def make_spec(name: str = "t1", **overrides: Any) -> DeploySpec:
    raw: dict[str, Any] = {
        "name": name, "region": REGION, "ami": {"ssm_parameter": AMI_PARAMETER},
        "allowed_cidr": CIDR,
        "roles": {"index": {"colocate": "aggregator"},
                  "predictors": {"placement": [["layer2.1", "layer3.0"], "auto"]}},
        "torch_index": {"cpu": "https://download.pytorch.org/whl/cpu"},
    }
    raw.update(overrides)
    return parse_spec(raw)


if TYPE_CHECKING:
    from gati.bundle.manifest import Manifest


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "checkpoint.pt").write_bytes(b"weights")
    (d / "manifest.yaml").write_text(fake_manifest("checkpoint.pt").to_yaml())
    (d / "cache-layer2.1.pt").write_bytes(b"\0" * 128)
    return d


def fake_manifest(checkpoint: str) -> Manifest:
    """A valid manifest with placeholder values (nothing loads the model it names)."""
    from gati.bundle.manifest import (
        CalibrationInfo,
        Certificate,
        CheckpointRef,
        Expected,
        Manifest,
        Profile,
        TrainInfo,
    )
    from gati.preprocess import Preprocess
    from gati.runtime.plan import Plan
    return Manifest(
        format_version=2, created="", arch="resnet18", model_module=None, num_classes=10,
        checkpoint=CheckpointRef(checkpoint, "ab"), dataset="cifar10",
        preprocess=Preprocess((0.5,) * 3, (0.25,) * 3),
        classes=[str(i) for i in range(10)], cuts=["layer2.1"], cut_shapes=[(128, 16, 16)], caches=[],
        plan=Plan([], "sync"), target=0.97, memory_mb=None,
        certified=Certificate("agreement with the base model >= 0.97", 0.97, 0.97, 0.03, 1, "test", "test", "cpu float32",
                              "", 0.97, 1.0, 0.0, 0.0, 10, 0, 0, 10, 0.0),
        expected=Expected(1.0, 1.0, 0.0, 1.0), calibration=CalibrationInfo("test:calib", 10, "", ""),
        train=TrainInfo("train", None, 10, 0), profile=Profile("cpu", "cpu", 1, 1.0, [1.0, 1.0]),
        versions={}, build_seconds=0.0)


def fake_wheel(project: Path, out_dir: Path) -> Path:
    """A tiny real file in place of `pip wheel` (a real build takes most of a minute)."""
    wheel = out_dir / "gati-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK fake wheel for tests")
    return wheel


@dataclass
class Recorder:
    """What deploy asked of its injected steps; it never opens a socket."""

    ready: bool = True
    pinged: list[Endpoint] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def answer(self, endpoint: Endpoint, timeout_s: float) -> bool:
        self.pinged.append(endpoint)
        return self.ready

    def hooks(self) -> Hooks:
        return Hooks(build_wheel=fake_wheel, wait_ready=self.answer, ping=self.answer,
                     sleep=self.slept.append, echo=self.lines.append,
                     my_cidr=lambda: "203.0.113.9/32", waiter_delay_s=1)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
