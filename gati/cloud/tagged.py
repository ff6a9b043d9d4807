"""Finding what carries a deployment's tags: the only things status reports and destroy removes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from botocore.exceptions import ClientError

from gati.cloud.deployment import IAM_PATH, TAG_DEPLOYMENT, TAG_REGION

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


@dataclass
class Found:
    instances: list[dict[str, Any]] = field(default_factory=list)   # describe_instances items
    security_groups: list[str] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    instance_profiles: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.instances or self.security_groups or self.buckets
                    or self.instance_profiles or self.roles)

    def describe(self) -> list[str]:
        return ([f"instance {i['InstanceId']} ({tag(i, 'Name')}, {i['State']['Name']})"
                 for i in self.instances]
                + [f"security group {g}" for g in self.security_groups]
                + [f"bucket {b}" for b in self.buckets]
                + [f"instance profile {p}" for p in self.instance_profiles]
                + [f"role {r}" for r in self.roles])


def tag(item: Mapping[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in item.get("Tags", []) if t["Key"] == key), None)


def _ours(tags: list[dict[str, str]], wanted: Mapping[str, str]) -> bool:
    have = {t["Key"]: t["Value"] for t in tags}
    return all(have.get(k) == v for k, v in wanted.items())


def find(session: Any, wanted: Mapping[str, str], states: list[str] = LIVE_STATES) -> Found:
    """Everything carrying all of `wanted`'s tags, in `session`'s region (IAM: global)."""
    ec2, s3, iam = (session.client(s) for s in ("ec2", "s3", "iam"))
    tag_filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in wanted.items()]
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[*tag_filters, {"Name": "instance-state-name", "Values": states}])
    return Found(
        instances=[i for p in pages for r in p["Reservations"] for i in r["Instances"]],
        security_groups=[g["GroupId"] for g in ec2.describe_security_groups(
            Filters=tag_filters)["SecurityGroups"]],
        buckets=_buckets(s3, wanted),
        instance_profiles=[p["InstanceProfileName"] for p in _iam_items(
            iam, "list_instance_profiles", "InstanceProfiles")
            if _ours(iam.get_instance_profile(InstanceProfileName=p["InstanceProfileName"])
                     ["InstanceProfile"].get("Tags", []), wanted)],
        roles=[r["RoleName"] for r in _iam_items(iam, "list_roles", "Roles")
               if _ours(iam.list_role_tags(RoleName=r["RoleName"])["Tags"], wanted)],
    )


def _iam_items(iam: Any, op: str, key: str) -> list[dict[str, Any]]:
    # Listing calls omit tags; the /gati/ path keeps the per-item tag look-ups few.
    pages = iam.get_paginator(op).paginate(PathPrefix=IAM_PATH)
    return [item for page in pages for item in page[key]]


def _buckets(s3: Any, wanted: Mapping[str, str]) -> list[str]:
    prefix = f"gati-{wanted[TAG_DEPLOYMENT]}-"
    out = []
    for b in s3.list_buckets()["Buckets"]:
        name = b["Name"]
        if not name.startswith(prefix) or not name.endswith(f"-{wanted[TAG_REGION]}"):
            continue
        try:
            tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchTagSet", "NoSuchBucket"):
                continue
            raise
        if _ours(tags, wanted):
            out.append(name)
    return out
