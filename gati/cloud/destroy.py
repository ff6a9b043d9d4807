"""Removing exactly what carries a deployment's tags, in dependency order: instances (their
network interfaces and volumes go with them), then the security group, the bucket with every
object, and the instance profile and role."""
from __future__ import annotations

from typing import Any, Callable

from botocore.exceptions import ClientError

from gati.cloud.deployment import deployment_tags
from gati.cloud.spec import DeploySpec
from gati.cloud.tagged import Found, find


def destroy(spec: DeploySpec, session: Any, sleep: Callable[[float], None],
            dry_run: bool = False, waiter_delay_s: int = 5) -> Found:
    """Returns what was found (and, unless `dry_run`, removed)."""
    found = find(session, deployment_tags(spec))
    if dry_run or found.empty():
        return found
    ec2, s3, iam = (session.client(s) for s in ("ec2", "s3", "iam"))
    ids = [i["InstanceId"] for i in found.instances]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=ids, WaiterConfig={"Delay": waiter_delay_s, "MaxAttempts": 120})
    for group in found.security_groups:
        _delete_group(ec2, group, sleep)
    for bucket in found.buckets:
        _delete_bucket(s3, bucket)
    for profile in found.instance_profiles:
        _delete_profile(iam, profile)
    for role in found.roles:
        _delete_role(iam, role)
    return found


def _delete_group(ec2: Any, group: str, sleep: Callable[[float], None]) -> None:
    # Network interfaces of just-terminated instances can hold the group for a while.
    for tries_left in range(24, -1, -1):
        try:
            ec2.delete_security_group(GroupId=group)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "DependencyViolation" or not tries_left:
                raise
            sleep(5.0)


def _delete_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def _delete_profile(iam: Any, profile: str) -> None:
    roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
    for role in roles:
        iam.remove_role_from_instance_profile(InstanceProfileName=profile,
                                              RoleName=role["RoleName"])
    iam.delete_instance_profile(InstanceProfileName=profile)


def _delete_role(iam: Any, role: str) -> None:
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        iam.delete_role_policy(RoleName=role, PolicyName=name)
    for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
    for profile in iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]:
        iam.remove_role_from_instance_profile(
            InstanceProfileName=profile["InstanceProfileName"], RoleName=role)
    iam.delete_role(RoleName=role)
