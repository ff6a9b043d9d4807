"""The deployment description (`deploy/aws.yaml`), read into frozen dataclasses and checked.

Every mistake is reported with the key that holds it, before anything is created in AWS.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from gati.errors import GatiError
from gati.learning.tier_config import TierConfig

AUTO = "auto"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")  # short: it ends up inside bucket and IAM names


class DeployError(GatiError):
    """A deployment description or an AWS state that the deployment cannot work with."""


@dataclass(frozen=True)
class RoleSpec:
    """An instance type for one role; `colocate` names another role whose instance it shares."""

    type: str
    count: int = 1
    colocate: str | None = None
    device: str | None = None          # executor only; None: derived from the instance type
    hourly_usd: float | None = None    # overrides the built-in price table


@dataclass(frozen=True)
class PredictorSpec:
    """One CPU instance per placement entry; each entry is a list of cut names or `auto`."""

    type: str
    placement: tuple[tuple[str, ...] | str, ...]
    hourly_usd: float | None = None


@dataclass(frozen=True)
class AmiSpec:
    id: str | None = None
    ssm_parameter: str | None = None


@dataclass(frozen=True)
class Ports:
    aggregator: int = 9090              # the one port open to allowed_cidr: predict, ping, status
    aggregator_internal: int = 9096     # report/finished from the executor and predictors
    executor: int = 9091
    predictor: int = 9092
    index: int = 9094
    retrainer: int = 9095
    # HTTP (health, readiness, Prometheus metrics): every service has one, open to the group only.
    metrics: int = 9100                 # the aggregator's (also the Open Inference Protocol, /v2)
    executor_metrics: int = 9101
    predictor_metrics: int = 9102
    index_metrics: int = 9104
    retrainer_metrics: int = 9105
    ssh: int = 22


@dataclass(frozen=True)
class ClusterTuning:
    """Settings copied into every instance's cluster config; None (or a timeout left out) keeps the
    services' own default, which is defined once, in gati/rpc/config.py."""

    timeouts_ms: Mapping[str, int] = field(default_factory=dict)
    max_message_mb: int | None = None
    queue_size: int | None = None   # the aggregator's
    workers: int | None = None      # the aggregator's
    sample_rate: float | None = None
    tier: Mapping[str, Any] | None = None  # the online neighbour tier (gati/rpc/config.py's `tier`); None: none


@dataclass(frozen=True)
class DeploySpec:
    name: str
    region: str
    ami: AmiSpec
    allowed_cidr: str
    aggregator: RoleSpec
    executor: RoleSpec
    index: RoleSpec
    retrainer: RoleSpec
    predictors: PredictorSpec
    key_name: str | None = None
    subnet_id: str | None = None
    availability_zone: str | None = None
    root_volume_gb: int = 100
    ports: Ports = Ports()
    cluster: ClusterTuning = ClusterTuning()
    torch_index: Mapping[str, str] = field(default_factory=dict)  # device -> pip index URL


def load_spec(path: str | Path, name: str | None = None) -> DeploySpec:
    """Read and check a deployment description; `name` overrides the file's deployment name."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"deployment description {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # the parser's message names the line and column
        raise DeployError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DeployError(f"{path}: expected a mapping at the top level")
    if name is not None:
        raw["name"] = name
    return parse_spec(raw)


def parse_spec(raw: Mapping[str, Any]) -> DeploySpec:
    _only(raw, "", {"name", "region", "ami", "allowed_cidr", "roles", "key_name", "subnet_id",
                    "availability_zone", "root_volume_gb", "ports", "cluster", "torch_index"})
    roles = _mapping(raw.get("roles"), "roles")
    _only(roles, "roles.", {"aggregator", "executor", "index", "retrainer", "predictors"})
    spec = DeploySpec(
        name=_name(raw.get("name")),
        region=_text(raw.get("region"), "region"),
        ami=_ami(raw.get("ami")),
        allowed_cidr=_cidr(raw.get("allowed_cidr")),
        aggregator=_role(roles, "aggregator", "c5.xlarge"),
        executor=_role(roles, "executor", "p3.2xlarge"),
        index=_role(roles, "index", "c5.xlarge"),
        retrainer=_role(roles, "retrainer", "c5.2xlarge"),
        predictors=_predictors(roles.get("predictors")),
        key_name=raw.get("key_name") or None,
        subnet_id=raw.get("subnet_id") or None,
        availability_zone=raw.get("availability_zone") or None,
        root_volume_gb=_positive_int(raw.get("root_volume_gb", 100), "root_volume_gb"),
        ports=_ports(raw.get("ports")),
        cluster=_cluster(raw.get("cluster")),
        torch_index=dict(_mapping(raw.get("torch_index"), "torch_index")),
    )
    _check_roles(spec)
    return spec


def _check_roles(spec: DeploySpec) -> None:
    # One aggregator per deployment (more: deployments behind a load balancer, docs/aws.md); the
    # executor's count is its replicas, each on an instance of its own.
    if spec.aggregator.count != 1 or spec.aggregator.colocate:
        raise DeployError("roles.aggregator: needs exactly one instance of its own (count: 1)")
    if spec.executor.count < 1 or spec.executor.colocate:
        raise DeployError("roles.executor: needs at least one instance of its own (count: replicas)")
    for role in ("index", "retrainer"):
        r: RoleSpec = getattr(spec, role)
        if r.count not in (0, 1):
            raise DeployError(f"roles.{role}.count: 0 or 1, not {r.count}")
        if r.colocate not in (None, "aggregator", "executor"):
            raise DeployError(f"roles.{role}.colocate: 'aggregator' or 'executor', "
                              f"not {r.colocate!r}")
    if spec.executor.device not in (None, "cpu", "cuda"):
        raise DeployError(f"roles.executor.device: cpu or cuda, not {spec.executor.device!r}")


def _only(raw: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in set(raw) - allowed)
    if unknown:
        raise DeployError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeployError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DeployError(f"{key}: required, a non-empty string")
    return value.strip()


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DeployError(f"{key}: a positive integer, not {value!r}")
    return value


def _name(value: Any) -> str:
    name = _text(value, "name")
    if not NAME_RE.match(name):
        raise DeployError(f"name: {name!r} must be 1-20 characters of a-z, 0-9 and '-', "
                          "starting with a letter (it becomes part of bucket and IAM names)")
    return name


def _ami(value: Any) -> AmiSpec:
    ami = _mapping(value, "ami")
    _only(ami, "ami.", {"id", "ssm_parameter"})
    if bool(ami.get("id")) == bool(ami.get("ssm_parameter")):
        raise DeployError("ami: give exactly one of id or ssm_parameter")
    return AmiSpec(id=ami.get("id"), ssm_parameter=ami.get("ssm_parameter"))


def _cidr(value: Any) -> str:
    # No open default: the aggregator and SSH are reachable from this range only. `auto` is
    # this machine's public address (/32, looked up at deploy); 0.0.0.0/0 is accepted only
    # because the user wrote it here.
    text = _text(value, "allowed_cidr (auto, or your address range such as 203.0.113.7/32)")
    if text == AUTO:
        return AUTO
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise DeployError(f"allowed_cidr: {text!r} is not a CIDR block ({exc})") from None


def _role(roles: Mapping[str, Any], role: str, default_type: str) -> RoleSpec:
    raw = _mapping(roles.get(role), f"roles.{role}")
    _only(raw, f"roles.{role}.", {"type", "count", "colocate", "device", "hourly_usd"})
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise DeployError(f"roles.{role}.count: a whole number >= 0, not {count!r}")
    return RoleSpec(type=raw.get("type", default_type), count=count, colocate=raw.get("colocate"),
                    device=raw.get("device"), hourly_usd=_price(raw, f"roles.{role}"))


def _predictors(value: Any) -> PredictorSpec:
    raw = _mapping(value, "roles.predictors")
    _only(raw, "roles.predictors.", {"type", "count", "placement", "hourly_usd"})
    placement = tuple(_cuts(p, i) for i, p in enumerate(raw.get("placement") or [AUTO]))
    count = raw.get("count", len(placement))
    if count != len(placement):
        raise DeployError(f"roles.predictors: count {count} but {len(placement)} placement "
                          "entries (one instance per entry)")
    if sum(p == AUTO for p in placement) > 1:
        raise DeployError("roles.predictors.placement: at most one 'auto' entry "
                          "(name the cuts of the others, so that each instance's load is chosen)")
    named = [c for p in placement if p != AUTO for c in p]
    if len(named) != len(set(named)):
        raise DeployError("roles.predictors.placement: a cut is placed on two predictors")
    return PredictorSpec(type=raw.get("type", "c5.xlarge"), placement=placement,
                         hourly_usd=_price(raw, "roles.predictors"))


def _cuts(entry: Any, i: int) -> tuple[str, ...] | str:
    if entry == AUTO:
        return AUTO
    if isinstance(entry, dict):  # {cuts: [...]} reads like the cluster config's entries
        entry = entry.get("cuts")
        if entry == AUTO:
            return AUTO
    if not isinstance(entry, list) or not entry or not all(isinstance(c, str) for c in entry):
        raise DeployError(f"roles.predictors.placement[{i}]: a non-empty list of cut names "
                          f"or 'auto', not {entry!r}")
    return tuple(entry)


def _price(raw: Mapping[str, Any], key: str) -> float | None:
    price = raw.get("hourly_usd")
    if price is not None and (not isinstance(price, (int, float)) or price < 0):
        raise DeployError(f"{key}.hourly_usd: a price >= 0, not {price!r}")
    return None if price is None else float(price)


def _ports(value: Any) -> Ports:
    raw = _mapping(value, "ports")
    _only(raw, "ports.", set(Ports.__dataclass_fields__))
    for key, port in raw.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise DeployError(f"ports.{key}: a TCP port, not {port!r}")
    return Ports(**raw)


def _cluster(value: Any) -> ClusterTuning:
    # Checked here: a bad value found by `gati serve` would surface only after instances boot.
    raw = _mapping(value, "cluster")
    _only(raw, "cluster.", set(ClusterTuning.__dataclass_fields__))
    for key in ("max_message_mb", "queue_size", "workers"):
        if key in raw:
            _positive_int(raw[key], f"cluster.{key}")
    rate = raw.get("sample_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise DeployError(f"cluster.sample_rate: a fraction in [0, 1], not {rate!r}")
    for key, ms in _mapping(raw.get("timeouts_ms"), "cluster.timeouts_ms").items():
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms <= 0:
            raise DeployError(f"cluster.timeouts_ms.{key}: a positive number, not {ms!r}")
    if raw.get("tier") is not None:
        try:
            TierConfig(**_mapping(raw["tier"], "cluster.tier"))
        except (GatiError, TypeError) as e:
            raise DeployError(f"cluster.tier: {e}") from e
    return ClusterTuning(**raw)
