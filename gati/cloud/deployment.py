"""The whole deployment as data, before any AWS call: names, tags, IAM policies, firewall
rules, and every instance with its config and user data. `--dry-run` prints it; deploy carries
it out. Nothing here talks to AWS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gati import __version__
from gati.cloud.layout import REMOTE_CONFIG, Node, cluster_config, nodes, service_ports
from gati.cloud.prices import Cost, total
from gati.cloud.spec import AUTO, DeployError, DeploySpec
from gati.cloud.userdata import SECRET_KEY, Artifacts, user_data
from gati.rpc.config import parse_config

TAG_DEPLOYMENT = "gati:deployment"
TAG_REGION = "gati:region"
IAM_PATH = "/gati/"


@dataclass(frozen=True)
class Resolved:
    """What only AWS (or the wheel build) can tell; placeholders in a dry run."""

    account_id: str
    ami_id: str
    subnet_id: str
    hosts: Mapping[str, str]        # node name -> private IPv4 address
    wheel_key: str


@dataclass(frozen=True)
class IngressRule:
    port: int
    source: str                     # "self" (members of the group) or a CIDR block
    description: str


@dataclass(frozen=True)
class InstancePlan:
    node: Node
    private_ip: str
    config: Mapping[str, Any]
    user_data: str


@dataclass(frozen=True)
class DeploymentPlan:
    spec: DeploySpec
    resolved: Resolved
    bucket: str
    iam_name: str
    security_group: str
    tags: Mapping[str, str]
    rules: tuple[IngressRule, ...]
    trust_policy: Mapping[str, Any]
    read_policy: Mapping[str, Any]
    instances: tuple[InstancePlan, ...]
    cost: Cost

    def instance(self, node_name: str) -> InstancePlan:
        return next(i for i in self.instances if i.node.name == node_name)


def deployment_tags(spec: DeploySpec) -> dict[str, str]:
    return {TAG_DEPLOYMENT: spec.name, TAG_REGION: spec.region}


def bucket_name(spec: DeploySpec, account_id: str) -> str:
    # Bucket names are global: account and region make this one ours.
    name = f"gati-{spec.name}-{account_id}-{spec.region}"
    if len(name) > 63:
        raise DeployError(f"bucket name {name} is over 63 characters: use a shorter name")
    return name


def iam_name(spec: DeploySpec) -> str:
    return f"gati-{spec.name}-{spec.region}"   # IAM is global: the region keeps names apart


def placeholders(spec: DeploySpec) -> Resolved:
    ami = spec.ami.id or f"<latest from SSM {spec.ami.ssm_parameter}>"
    return Resolved(account_id="<account-id>", ami_id=ami,
                    subnet_id=spec.subnet_id or "<default subnet>",
                    hosts={n.name: f"<private-ip:{n.name}>" for n in nodes(spec)},
                    wheel_key=f"gati-{__version__}-py3-none-any.whl")


def build_plan(spec: DeploySpec, resolved: Resolved) -> DeploymentPlan:
    all_nodes = nodes(spec)
    bucket = bucket_name(spec, resolved.account_id)
    artifacts = Artifacts(bucket=bucket, region=spec.region, wheel_key=resolved.wheel_key)
    instances = tuple(
        _instance(spec, all_nodes, resolved.hosts, node, artifacts) for node in all_nodes)
    return DeploymentPlan(
        spec=spec, resolved=resolved, bucket=bucket, iam_name=iam_name(spec),
        security_group=f"gati-{spec.name}", tags=deployment_tags(spec),
        rules=ingress_rules(spec, all_nodes),
        trust_policy=_trust_policy(), read_policy=read_policy(bucket),
        instances=instances,
        cost=total((n.instance_type, n.hourly_usd) for n in all_nodes),
    )


def _instance(spec: DeploySpec, all_nodes: tuple[Node, ...], hosts: Mapping[str, str],
              node: Node, artifacts: Artifacts) -> InstancePlan:
    config = cluster_config(spec, all_nodes, hosts, node)
    # the services' own parser, now: a config `gati serve` rejects would surface only after boot
    parse_config(dict(config), Path(REMOTE_CONFIG))
    script = user_data(spec.name, node, config, artifacts, spec.torch_index.get(node.device))
    return InstancePlan(node=node, private_ip=hosts[node.name], config=config, user_data=script)


def ingress_rules(spec: DeploySpec, all_nodes: tuple[Node, ...]) -> tuple[IngressRule, ...]:
    """Service ports only between members of the group; the aggregator's public port and SSH
    from the CIDR (its internal port, like every other service port, from the group only)."""
    internal = sorted({p for n in all_nodes for p in service_ports(spec, n).values()})
    rules = [IngressRule(p, "self", "gati services, between the deployment's instances")
             for p in internal]
    rules.append(IngressRule(spec.ports.aggregator, spec.allowed_cidr, "gati aggregator, clients"))
    rules.append(IngressRule(spec.ports.ssh, spec.allowed_cidr, "ssh"))
    return tuple(rules)


def _trust_policy() -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def read_policy(bucket: str) -> dict[str, Any]:
    """The instance role's only permission: read this deployment's bucket."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadObjects", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Sid": "ListBucket", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}"},
    ]}


def render(plan: DeploymentPlan) -> str:
    """A readable, complete account of the plan (what `--dry-run` prints)."""
    s, r = plan.spec, plan.resolved
    lines = [
        f"deployment {s.name} in {s.region} (subnet {r.subnet_id}, AMI {r.ami_id})",
        f"tags on every resource: {json.dumps(dict(plan.tags))}",
        f"S3 bucket {plan.bucket}: private (public access blocked), encrypted (SSE-S3); "
        f"objects {r.wheel_key}, bundle.tar.gz, {SECRET_KEY} (generated at deploy: signs every call "
        f"between services; only the instance role reads it)",
        f"IAM role and instance profile {plan.iam_name} (path {IAM_PATH}), "
        f"trust: ec2.amazonaws.com, policy:",
        json.dumps(plan.read_policy, indent=2),
        f"security group {plan.security_group}, inbound (outbound: all, for pip and S3):",
        *(f"  tcp {rule.port:<5} from {_source(rule.source):<18} {rule.description}"
          for rule in plan.rules),
        "instances:",
        *(_instance_line(i) for i in plan.instances),
        f"hourly cost: {plan.cost.describe()}",
    ]
    for i in plan.instances:
        lines += [f"\n--- user data of {i.node.name} ---", i.user_data]
    return "\n".join(lines)


def _source(source: str) -> str:
    return "auto: this machine/32" if source == AUTO else source


def _instance_line(i: InstancePlan) -> str:
    n = i.node
    price = "?" if n.hourly_usd is None else f"${n.hourly_usd:.3f}/h"
    cuts = "" if n.cuts is None else f" cuts={n.cuts if isinstance(n.cuts, str) else list(n.cuts)}"
    return (f"  {n.name:<12} {n.instance_type:<11} {n.device:<4} {price:<10} "
            f"roles={','.join(n.roles)}{cuts} ip={i.private_ip}")
