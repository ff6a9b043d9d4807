"""The inventory file: what was launched, where, on which ports. Written by deploy, removed by
destroy; it holds addresses and ids only, never credentials."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gati.cloud.wait import Endpoint


@dataclass(frozen=True)
class Entry:
    node: str
    roles: list[str]
    instance_id: str
    instance_type: str
    private_ip: str
    public_ip: str | None
    ports: dict[str, int]


@dataclass(frozen=True)
class Inventory:
    deployment: str
    region: str
    bucket: str
    security_group: str
    instance_profile: str
    endpoint: str
    entries: list[Entry]


def inventory_path(directory: Path, deployment: str, region: str) -> Path:
    return directory / f"aws-{deployment}-{region}.json"


def write_inventory(inv: Inventory, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = inventory_path(directory, inv.deployment, inv.region)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(inv), indent=2) + "\n")
    os.replace(tmp, path)   # a reader never sees half a file
    return path


def aggregator_endpoint(entries: list[Entry]) -> Endpoint:
    """Public address when the instance has one (clients come from outside), else private."""
    e = next(e for e in entries if "aggregator" in e.roles)
    return Endpoint(e.public_ip or e.private_ip, e.ports["aggregator"])
