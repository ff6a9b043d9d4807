"""Creating the deployment's AWS resources from a plan: bucket, instance role, security group,
instances. Every one carries the plan's tags, which is how status and destroy find them."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from botocore.exceptions import ClientError

from gati.cloud.deployment import IAM_PATH, DeploymentPlan, InstancePlan
from gati.cloud.network import Subnet
from gati.cloud.userdata import SECRET_KEY
from gati.rpc.auth import Secret

READ_POLICY_NAME = "read-deployment-bucket"


def tag_list(tags: Mapping[str, str], name: str | None = None) -> list[dict[str, str]]:
    out = [{"Key": k, "Value": v} for k, v in tags.items()]
    return out + ([{"Key": "Name", "Value": name}] if name else [])


def create_bucket(s3: Any, plan: DeploymentPlan, uploads: Mapping[str, Path]) -> None:
    """A private, encrypted bucket holding the wheel and the bundle."""
    b = plan.bucket
    if plan.spec.region == "us-east-1":   # the one region that rejects a LocationConstraint
        s3.create_bucket(Bucket=b)
    else:
        s3.create_bucket(Bucket=b, CreateBucketConfiguration={
            "LocationConstraint": plan.spec.region})
    s3.put_bucket_tagging(Bucket=b, Tagging={"TagSet": tag_list(plan.tags)})
    s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=b, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
        "BucketKeyEnabled": True}]})
    for key, path in uploads.items():
        s3.upload_file(str(path), b, key)


def put_secret(s3: Any, plan: DeploymentPlan) -> None:
    """A fresh deployment secret, straight into the bucket: the instances read it with their role;
    it is never written to this machine, to user data, or to any output."""
    s3.put_object(Bucket=plan.bucket, Key=SECRET_KEY, Body=Secret.generate().text().encode(),
                  ServerSideEncryption="AES256")


def create_instance_role(iam: Any, plan: DeploymentPlan) -> str:
    """Role + instance profile whose one permission is reading the bucket; returns the name."""
    name, tags = plan.iam_name, tag_list(plan.tags)
    iam.create_role(RoleName=name, Path=IAM_PATH, Tags=tags,
                    AssumeRolePolicyDocument=json.dumps(plan.trust_policy),
                    Description=f"GATI deployment {plan.spec.name}: read its bucket")
    iam.put_role_policy(RoleName=name, PolicyName=READ_POLICY_NAME,
                        PolicyDocument=json.dumps(plan.read_policy))
    iam.create_instance_profile(InstanceProfileName=name, Path=IAM_PATH, Tags=tags)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def create_security_group(ec2: Any, plan: DeploymentPlan, vpc_id: str) -> str:
    group = ec2.create_security_group(
        GroupName=plan.security_group, VpcId=vpc_id,
        Description=f"GATI deployment {plan.spec.name}",
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": tag_list(plan.tags, plan.security_group)}])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=permissions(plan, group))
    return group


def permissions(plan: DeploymentPlan, group: str) -> list[dict[str, Any]]:
    """One IpPermission per port, merging the group and CIDR sources of that port."""
    by_port: dict[int, dict[str, Any]] = {}
    for rule in plan.rules:
        perm = by_port.setdefault(rule.port, {"IpProtocol": "tcp", "FromPort": rule.port,
                                              "ToPort": rule.port})
        if rule.source == "self":
            perm.setdefault("UserIdGroupPairs", []).append(
                {"GroupId": group, "Description": rule.description})
        elif ipaddress.ip_network(rule.source).version == 6:
            perm.setdefault("Ipv6Ranges", []).append(
                {"CidrIpv6": rule.source, "Description": rule.description})
        else:
            perm.setdefault("IpRanges", []).append(
                {"CidrIp": rule.source, "Description": rule.description})
    return list(by_port.values())


def launch(ec2: Any, plan: DeploymentPlan, subnet: Subnet, group: str, profile: str,
           sleep: Callable[[float], None]) -> dict[str, str]:
    """Start every instance of the plan; returns node name -> instance id."""
    root = _root_device(ec2, plan.resolved.ami_id, plan.spec.root_volume_gb)
    return {i.node.name: _run(ec2, plan, i, subnet, group, profile, root, sleep)
            for i in plan.instances}


def _root_device(ec2: Any, ami: str, size_gb: int) -> dict[str, Any]:
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    name = image["RootDeviceName"]
    snapshot = next((m["Ebs"].get("VolumeSize", 0) for m in image.get("BlockDeviceMappings", [])
                     if m.get("DeviceName") == name and "Ebs" in m), 0)
    # PyTorch with CUDA needs room; a volume smaller than the image's snapshot is refused.
    return {"DeviceName": name, "Ebs": {"VolumeSize": max(size_gb, snapshot), "VolumeType": "gp3",
                                        "Encrypted": True, "DeleteOnTermination": True}}


def _run(ec2: Any, plan: DeploymentPlan, inst: InstancePlan, subnet: Subnet, group: str, profile: str,
         root: dict[str, Any], sleep: Callable[[float], None]) -> str:
    name = f"gati-{plan.spec.name}-{inst.node.name}"
    tags = tag_list({**plan.tags, "gati:node": inst.node.name,
                     "gati:roles": ",".join(inst.node.roles)}, name)
    args: dict[str, Any] = dict(
        ImageId=plan.resolved.ami_id, InstanceType=inst.node.instance_type,
        MinCount=1, MaxCount=1, UserData=inst.user_data,
        IamInstanceProfile={"Name": profile}, BlockDeviceMappings=[root],
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet.id, "Groups": [group],
                            "PrivateIpAddress": inst.private_ip,
                            "AssociatePublicIpAddress": True, "DeleteOnTermination": True}],
        TagSpecifications=[{"ResourceType": t, "Tags": tags} for t in ("instance", "volume")])
    if plan.spec.key_name:
        args["KeyName"] = plan.spec.key_name
    tries = 12
    while True:
        try:
            return ec2.run_instances(**args)["Instances"][0]["InstanceId"]
        except ClientError as exc:
            # A new instance profile takes a few seconds to become visible to EC2.
            tries -= 1
            if tries == 0 or "instance profile" not in str(exc).lower():
                raise
            sleep(5.0)
