"""The cloud-init user data (a shell script run once, as root, on first boot) of one instance.

It installs the wheel into a virtual environment, fetches the bundle from the deployment's
bucket with the instance role (no credentials travel in user data), writes the instance's
cluster config, and starts one systemd unit per service. Every instance serves the bundle's plan
as shipped: re-planning on one of them would give the executor other cuts and thresholds than the
aggregator and predictors read. Its log is /var/log/gati-init.log on the instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from gati.cloud.layout import (
    REMOTE_BUNDLE,
    REMOTE_CONFIG,
    REMOTE_LOGS,
    REMOTE_ROOT,
    Node,
)
from gati.cloud.spec import DeployError

USER_DATA_LIMIT = 16 * 1024   # EC2's limit on user data, before base64
BUNDLE_KEY = "bundle.tar.gz"


@dataclass(frozen=True)
class Artifacts:
    """Where the instance finds what it installs: the bucket and the object keys."""

    bucket: str
    region: str
    wheel_key: str
    bundle_key: str = BUNDLE_KEY


def user_data(deployment: str, node: Node, config: Mapping[str, Any], artifacts: Artifacts,
              torch_index: str | None) -> str:
    parts = [
        _header(deployment, node),
        _install(artifacts, torch_index),
        _fetch(artifacts),
        _write_config(config),
        f"chown -R gati: {REMOTE_ROOT} {REMOTE_LOGS}",
        *(_unit(role, node) for role in node.roles),
    ]
    script = "\n".join(p for p in parts if p)
    if len(script.encode()) > USER_DATA_LIMIT:
        raise DeployError(f"user data of {node.name} is {len(script.encode())} bytes, over "
                          f"EC2's {USER_DATA_LIMIT}: place fewer cuts by name")
    return script


def _header(deployment: str, node: Node) -> str:
    return f"""#!/bin/bash
# GATI deployment {deployment}: instance {node.name} ({', '.join(node.roles)}), by deploy/aws.py
set -euo pipefail
exec >>/var/log/gati-init.log 2>&1
echo "gati-init: start $(date -u +%FT%TZ)"
id gati >/dev/null 2>&1 || useradd --system --home-dir {REMOTE_ROOT} --shell /usr/sbin/nologin gati
mkdir -p {REMOTE_ROOT} {REMOTE_BUNDLE} {REMOTE_LOGS}"""


def _install(artifacts: Artifacts, torch_index: str | None) -> str:
    # Ubuntu images lack ensurepip until python3-venv is installed.
    index = f" --extra-index-url {torch_index}" if torch_index else ""
    wheel = f"{REMOTE_ROOT}/{artifacts.wheel_key}"
    return f"""python3 -m venv {REMOTE_ROOT}/venv || {{
  apt-get update -q && apt-get install -y -q python3-venv && python3 -m venv --clear {REMOTE_ROOT}/venv; }}
{REMOTE_ROOT}/venv/bin/pip install -q --upgrade pip boto3
{REMOTE_ROOT}/venv/bin/python - <<'FETCH'
import boto3
s3 = boto3.client("s3", region_name="{artifacts.region}")
s3.download_file("{artifacts.bucket}", "{artifacts.wheel_key}", "{wheel}")
s3.download_file("{artifacts.bucket}", "{artifacts.bundle_key}", "{REMOTE_ROOT}/{artifacts.bundle_key}")
FETCH
{REMOTE_ROOT}/venv/bin/pip install -q{index} "{wheel}[aws]\""""


def _fetch(artifacts: Artifacts) -> str:
    return f"tar -xzf {REMOTE_ROOT}/{artifacts.bundle_key} -C {REMOTE_BUNDLE}"


def _write_config(config: Mapping[str, Any]) -> str:
    text = yaml.safe_dump(dict(config), sort_keys=False)
    return f"cat >{REMOTE_CONFIG} <<'GATI_CONFIG'\n{text}GATI_CONFIG"


def _unit(role: str, node: Node) -> str:
    name = f" --name {node.name}" if role == "predictor" else ""
    unit = f"gati-{role}"
    return f"""cat >/etc/systemd/system/{unit}.service <<'UNIT'
[Unit]
Description=GATI {role} ({node.name})
Wants=network-online.target
After=network-online.target

[Service]
User=gati
WorkingDirectory={REMOTE_ROOT}
ExecStart={REMOTE_ROOT}/venv/bin/gati serve --role {role} --config {REMOTE_CONFIG}{name}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now {unit}.service
echo "gati-init: started {unit}"
"""
