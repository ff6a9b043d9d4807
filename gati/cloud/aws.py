"""Deploy, inspect and destroy a GATI cluster on AWS (boto3). Credentials come only from the
standard chain of the boto3 session (environment, profile, instance role): nothing here reads,
prints or writes them.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gati.bundle import read_manifest
from gati.cloud import resources
from gati.cloud.artifacts import pack_bundle
from gati.cloud.deployment import DeploymentPlan, Resolved, build_plan, deployment_tags
from gati.cloud.hooks import Hooks
from gati.cloud.inventory import (
    Entry,
    Inventory,
    aggregator_endpoint,
    inventory_path,
    write_inventory,
)
from gati.cloud.layout import nodes, service_ports
from gati.cloud.network import Subnet, find_subnet, free_addresses, used_addresses
from gati.cloud.spec import AUTO, DeployError, DeploySpec
from gati.cloud.tagged import find, tag
from gati.cloud.userdata import BUNDLE_KEY
from gati.cloud.wait import Endpoint


@dataclass
class Result:
    inventory: Inventory
    inventory_file: Path
    ready: bool
    plan: DeploymentPlan = field(repr=False)


def session_for(spec: DeploySpec) -> Any:
    import boto3  # the aws extra; only deploy/status/destroy need it
    return boto3.Session(region_name=spec.region)


def resolve_ami(session: Any, spec: DeploySpec) -> str:
    if spec.ami.id:
        return spec.ami.id
    return session.client("ssm").get_parameter(Name=spec.ami.ssm_parameter)["Parameter"]["Value"]


def deploy(spec: DeploySpec, bundle: Path, project: Path, session: Any, hooks: Hooks,
           inventory_dir: Path, ready_timeout_s: float = 1800.0) -> Result:
    read_manifest(bundle)  # a missing or corrupt bundle fails here, before anything is created
    _refuse_existing(session, spec)
    if spec.allowed_cidr == AUTO:
        spec = replace(spec, allowed_cidr=hooks.my_cidr())
        hooks.echo(f"allowed_cidr auto: {spec.allowed_cidr}")
    ec2 = session.client("ec2")
    subnet = find_subnet(ec2, spec)
    plan = _stage(spec, bundle, project, session, subnet, hooks)
    profile = resources.create_instance_role(session.client("iam"), plan)
    group = resources.create_security_group(ec2, plan, subnet.vpc_id)
    ids = resources.launch(ec2, plan, subnet, group, profile, hooks.sleep)
    ec2.get_waiter("instance_running").wait(
        InstanceIds=list(ids.values()),
        WaiterConfig={"Delay": hooks.waiter_delay_s, "MaxAttempts": 120})
    inv = _inventory(ec2, plan, ids, group, profile)
    path = write_inventory(inv, inventory_dir)
    hooks.echo(f"inventory: {path}\nwaiting for the aggregator at {inv.endpoint} "
               "(first boot installs PyTorch: several minutes)")
    ready = hooks.wait_ready(aggregator_endpoint(inv.entries), ready_timeout_s)
    hooks.echo(f"endpoint: {inv.endpoint}" if ready else
               f"the aggregator at {inv.endpoint} did not answer within {ready_timeout_s:.0f} s;"
               " see /var/log/gati-init.log and `journalctl -u 'gati-*'` on the instances")
    return Result(inv, path, ready, plan)


def _refuse_existing(session: Any, spec: DeploySpec) -> None:
    existing = find(session, deployment_tags(spec))
    if not existing.empty():
        raise DeployError(
            f"deployment {spec.name!r} already exists in {spec.region} ("
            + "; ".join(existing.describe()) + "): run `make destroy-aws` first or pick "
            "another name (--name)")


def _stage(spec: DeploySpec, bundle: Path, project: Path, session: Any, subnet: Subnet,
           hooks: Hooks) -> DeploymentPlan:
    """Build the wheel, pack the bundle, plan, and put both into the new bucket."""
    with tempfile.TemporaryDirectory(prefix="gati-deploy-") as tmp:
        wheel = hooks.build_wheel(project, Path(tmp))
        packed = pack_bundle(bundle, Path(tmp) / BUNDLE_KEY)
        plan = _plan(spec, session, subnet, wheel.name)
        hooks.echo(f"deploying {spec.name} to {spec.region} ({subnet.availability_zone}), "
                   f"{len(plan.instances)} instances, {plan.cost.describe()}")
        resources.create_bucket(session.client("s3"), plan,
                                {wheel.name: wheel, BUNDLE_KEY: packed})
        resources.put_secret(session.client("s3"), plan)
    return plan


def _plan(spec: DeploySpec, session: Any, subnet: Subnet, wheel_key: str) -> DeploymentPlan:
    ec2 = session.client("ec2")
    names = [n.name for n in nodes(spec)]
    addresses = free_addresses(subnet, used_addresses(ec2, subnet), len(names))
    resolved = Resolved(
        account_id=session.client("sts").get_caller_identity()["Account"],
        ami_id=resolve_ami(session, spec), subnet_id=subnet.id,
        hosts=dict(zip(names, addresses)), wheel_key=wheel_key)
    return build_plan(spec, resolved)


def _inventory(ec2: Any, plan: DeploymentPlan, ids: dict[str, str], group: str,
               profile: str) -> Inventory:
    described = {i["InstanceId"]: i for r in ec2.describe_instances(
        InstanceIds=list(ids.values()))["Reservations"] for i in r["Instances"]}
    entries = []
    for inst in plan.instances:
        d = described[ids[inst.node.name]]
        entries.append(Entry(
            node=inst.node.name, roles=list(inst.node.roles), instance_id=d["InstanceId"],
            instance_type=d["InstanceType"], private_ip=d["PrivateIpAddress"],
            public_ip=d.get("PublicIpAddress"), ports=service_ports(plan.spec, inst.node)))
    return Inventory(deployment=plan.spec.name, region=plan.spec.region, bucket=plan.bucket,
                     security_group=group, instance_profile=profile,
                     endpoint=str(aggregator_endpoint(entries)), entries=entries)


def status(spec: DeploySpec, session: Any, hooks: Hooks) -> list[dict[str, Any]]:
    """One row per live instance, from AWS itself; pings the aggregator once when it runs."""
    found = find(session, deployment_tags(spec))
    rows = [{"node": tag(i, "gati:node"), "roles": tag(i, "gati:roles"),
             "instance_id": i["InstanceId"], "type": i["InstanceType"],
             "state": i["State"]["Name"], "private_ip": i.get("PrivateIpAddress"),
             "public_ip": i.get("PublicIpAddress")} for i in found.instances]
    rows.sort(key=lambda r: r["node"] or "")
    for r in rows:
        hooks.echo("{node:<12} {roles:<20} {instance_id:<20} {type:<11} {state:<9} "
                   "private {private_ip} public {public_ip}".format(**r))
    agg = next((r for r in rows if "aggregator" in (r["roles"] or "").split(",")
                and r["state"] == "running"), None)
    if agg is None:
        hooks.echo(f"no running aggregator in deployment {spec.name} ({spec.region})")
    else:
        endpoint = Endpoint(agg["public_ip"] or agg["private_ip"], spec.ports.aggregator)
        answered = hooks.ping(endpoint, 3.0)
        hooks.echo(f"aggregator {endpoint}: {'answers ping' if answered else 'no answer'}")
    return rows


def forget_inventory(spec: DeploySpec, inventory_dir: Path) -> None:
    inventory_path(inventory_dir, spec.name, spec.region).unlink(missing_ok=True)
