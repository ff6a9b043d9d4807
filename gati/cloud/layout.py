"""Which instances a deployment has, which services each runs, and each one's cluster config.

The config follows the cluster config schema read by `gati serve --role ROLE --config FILE`:
the same services block on every instance (hosts are the instances' private addresses), with
`device` set to what that instance has (cuda only on a GPU executor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from gati.cloud.prices import default_device, hourly_usd
from gati.cloud.spec import AUTO, DeployError, DeploySpec

REMOTE_ROOT = "/opt/gati"           # where user data installs everything on an instance
REMOTE_BUNDLE = f"{REMOTE_ROOT}/bundle"
REMOTE_CONFIG = f"{REMOTE_ROOT}/config.yaml"
REMOTE_SECRET = f"{REMOTE_ROOT}/secret"   # the deployment secret, fetched at boot with the instance role
REMOTE_LOGS = "/var/log/gati"
REMOTE_STATE = "/var/lib/gati/state"   # what survives a service's restart (gati/rpc/durable.py)


@dataclass(frozen=True)
class Node:
    """One instance: its name inside the deployment and the services (`gati serve` roles) on it."""

    name: str                       # "aggregator", "executor", "predictor-0", ...
    roles: tuple[str, ...]
    instance_type: str
    device: str
    hourly_usd: float | None
    cuts: tuple[str, ...] | str | None = None   # predictors only


def nodes(spec: DeploySpec) -> tuple[Node, ...]:
    """The instances, in launch order; index/retrainer either get their own or share one (with the
    aggregator, or the first executor replica). One executor is named `executor`, several
    `executor-0`, `executor-1`, ... (each also its replica's name in the cluster config)."""
    ex = spec.executor
    executors = ["executor"] if ex.count == 1 else [f"executor-{i}" for i in range(ex.count)]
    own: dict[str, list[str]] = {"aggregator": ["aggregator"], **{e: ["executor"] for e in executors}}
    for role in ("index", "retrainer"):
        r = getattr(spec, role)
        if r.colocate:
            own[executors[0] if r.colocate == "executor" else r.colocate].append(role)
        elif r.count:
            own[role] = [role]
    out = []
    for name, roles in own.items():
        role = roles[0]
        r = getattr(spec, role)
        device = (r.device or default_device(r.type)) if role == "executor" else "cpu"
        out.append(Node(name, tuple(roles), r.type, device, hourly_usd(r.type, r.hourly_usd)))
    p = spec.predictors
    for i, cuts in enumerate(p.placement):
        out.append(Node(f"predictor-{i}", ("predictor",), p.type, "cpu",
                        hourly_usd(p.type, p.hourly_usd), cuts))
    _check_ports(spec, out)
    return tuple(out)


def service_ports(spec: DeploySpec, node: Node) -> dict[str, int]:
    """Ports the node listens on, by name: each role's Thrift port and its HTTP port (health, metrics;
    the aggregator's is `metrics`, also serving /v2), and the aggregator's callback port."""
    ports = {}
    for role in node.roles:
        ports[role] = getattr(spec.ports, role)
        ports[http_port_name(role)] = getattr(spec.ports, http_port_name(role))
    if "aggregator" in node.roles:
        ports["aggregator_internal"] = spec.ports.aggregator_internal
    return ports


def http_port_name(role: str) -> str:
    return "metrics" if role == "aggregator" else f"{role}_metrics"


def _check_ports(spec: DeploySpec, all_nodes: list[Node]) -> None:
    for node in all_nodes:
        ports = service_ports(spec, node)
        if len(set(ports.values())) != len(ports) or spec.ports.ssh in ports.values():
            raise DeployError(f"ports: services sharing instance {node.name} need distinct "
                              f"ports (and not the SSH port), got {ports}")


def cluster_config(spec: DeploySpec, all_nodes: tuple[Node, ...], hosts: Mapping[str, str],
                   node: Node) -> dict[str, Any]:
    """The config file written on `node`; `hosts` maps node names to private addresses."""
    c, ports = spec.cluster, spec.ports
    where = {role: n.name for n in all_nodes for role in n.roles if role not in ("predictor", "executor")}
    tuned = {k: v for k, v in (("queue_size", c.queue_size), ("workers", c.workers), ("sample_rate", c.sample_rate))
             if v is not None}

    def at(role: str, name: str) -> dict[str, Any]:
        return {"host": hosts[name], "port": getattr(ports, role), "http_port": getattr(ports, http_port_name(role))}

    executors = [{"name": n.name, **at("executor", n.name)} for n in all_nodes if "executor" in n.roles]
    services: dict[str, Any] = {
        "aggregator": {**at("aggregator", where["aggregator"]), "internal_port": ports.aggregator_internal, **tuned},
        **({"executor": executors[0]} if len(executors) == 1 else {"executors": executors}),
        "predictors": [
            {"name": n.name, **at("predictor", n.name), "cuts": n.cuts if n.cuts == AUTO else list(n.cuts or ())}
            for n in all_nodes if "predictor" in n.roles],
    }
    for role in ("index", "retrainer"):
        if role in where:
            services[role] = at(role, where[role])
    config = {
        "bundle": REMOTE_BUNDLE,
        "device": node.device,
        "log_dir": REMOTE_LOGS,
        "state_dir": REMOTE_STATE,
        "secret_file": REMOTE_SECRET,
        "timeouts_ms": dict(c.timeouts_ms),
        "hop_delay_ms": 0.0,        # real network hops: nothing to inject
        "services": services,
    }
    if c.max_message_mb is not None:
        config["max_message_mb"] = c.max_message_mb
    if c.tier is not None:
        config["tier"] = dict(c.tier)
    return config
