"""`deploy` against moto: instances, user data, firewall, IAM, bucket, inventory, refusal."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from moto.core.authorization import enable_iam_authentication

from gati.cloud.aws import Result, deploy
from gati.cloud.spec import DeployError
from tests.aws.conftest import CIDR, FAKE_SECRET, REGION, Recorder, make_spec

PROJECT = Path(__file__).resolve().parents[2]


def run_deploy(session: Any, recorder: Recorder, bundle: Path, tmp_path: Path,
               name: str = "t1", **spec_overrides: Any) -> Result:
    spec = make_spec(name, **spec_overrides)
    return deploy(spec, bundle, PROJECT, session, recorder.hooks(), tmp_path / "inv")


def instances(session: Any, name: str) -> list[dict[str, Any]]:
    r = session.client("ec2").describe_instances(Filters=[
        {"Name": "tag:gati:deployment", "Values": [name]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
    return [i for res in r for i in res["Instances"]]


def tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def user_data(session: Any, instance_id: str) -> str:
    raw = session.client("ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(raw).decode()


def config_in(script: str) -> dict[str, Any]:
    body = script.split("<<'GATI_CONFIG'\n", 1)[1].split("\nGATI_CONFIG", 1)[0]
    return yaml.safe_load(body)


def test_launches_each_role_with_its_type_tags_and_user_data(session, recorder, bundle, tmp_path):
    result = run_deploy(session, recorder, bundle, tmp_path,
                        roles={"executor": {"type": "g5.xlarge"},
                               "index": {"colocate": "aggregator"},
                               "predictors": {"placement": [["layer2.1", "layer3.0"], "auto"]}})
    launched = {tags(i)["gati:node"]: i for i in instances(session, "t1")}
    assert {n: i["InstanceType"] for n, i in launched.items()} == {
        "aggregator": "c5.xlarge", "executor": "g5.xlarge", "retrainer": "c5.2xlarge",
        "predictor-0": "c5.xlarge", "predictor-1": "c5.xlarge"}
    for node, inst in launched.items():
        assert tags(inst)["gati:deployment"] == "t1" and tags(inst)["gati:region"] == REGION
        assert tags(inst)["Name"] == f"gati-t1-{node}"
        assert inst["IamInstanceProfile"]["Arn"].endswith(f"/gati/gati-t1-{REGION}")

    hosts = {n: i["PrivateIpAddress"] for n, i in launched.items()}
    for node, inst in launched.items():
        script = user_data(session, inst["InstanceId"])
        cfg = config_in(script)
        # every instance's config names the real private addresses, per the schema
        # settings the description leaves out keep the services' own defaults (gati/rpc/config.py)
        # every service has its HTTP port (health, metrics), open to the group only (below)
        assert cfg["services"]["aggregator"] == {"host": hosts["aggregator"], "port": 9090, "http_port": 9100,
                                                 "internal_port": 9096}
        assert cfg["secret_file"] == "/opt/gati/secret"
        assert cfg["services"]["executor"] == {"name": "executor", "host": hosts["executor"], "port": 9091,
                                               "http_port": 9101}
        assert cfg["services"]["index"] == {"host": hosts["aggregator"], "port": 9094, "http_port": 9104}
        assert cfg["services"]["retrainer"] == {"host": hosts["retrainer"], "port": 9095, "http_port": 9105}
        assert cfg["services"]["predictors"] == [
            {"name": "predictor-0", "host": hosts["predictor-0"], "port": 9092, "http_port": 9102,
             "cuts": ["layer2.1", "layer3.0"]},
            {"name": "predictor-1", "host": hosts["predictor-1"], "port": 9092, "http_port": 9102, "cuts": "auto"}]
        assert cfg["device"] == ("cuda" if node == "executor" else "cpu")
        assert cfg["bundle"] == "/opt/gati/bundle"
        assert result.plan.bucket in script and FAKE_SECRET not in script
        assert "gati plan" not in script  # every node serves the shipped plan: none re-plans alone
    assert "--role aggregator --config /opt/gati/config.yaml" in user_data(
        session, launched["aggregator"]["InstanceId"])
    assert "--role index --config" in user_data(session, launched["aggregator"]["InstanceId"])
    assert "--role predictor --config /opt/gati/config.yaml --name predictor-1" in user_data(
        session, launched["predictor-1"]["InstanceId"])


def test_security_group_rules_are_exactly_the_intended_ones(session, recorder, bundle, tmp_path):
    run_deploy(session, recorder, bundle, tmp_path)
    ec2 = session.client("ec2")
    group = ec2.describe_security_groups(Filters=[
        {"Name": "tag:gati:deployment", "Values": ["t1"]}])["SecurityGroups"]
    assert len(group) == 1
    g = group[0]
    rules = set()
    for perm in g["IpPermissions"]:
        assert perm["IpProtocol"] == "tcp" and perm["FromPort"] == perm["ToPort"]
        rules |= {(perm["FromPort"], p["GroupId"]) for p in perm["UserIdGroupPairs"]}
        rules |= {(perm["FromPort"], r["CidrIp"]) for r in perm["IpRanges"]}
        assert not perm.get("Ipv6Ranges")
    me = g["GroupId"]
    # Only the public port (and SSH) from allowed_cidr; the aggregator's callback port, like every
    # other service port, from the deployment's own group only.
    assert rules == {(9090, me), (9096, me), (9091, me), (9092, me), (9094, me), (9095, me), (9100, me),
                     (9101, me), (9102, me), (9104, me), (9105, me), (9090, CIDR), (22, CIDR)}
    for inst in instances(session, "t1"):
        assert [g["GroupId"] for g in inst["NetworkInterfaces"][0]["Groups"]] == [me]


def test_instance_role_reads_only_the_deployment_bucket(session, recorder, bundle, tmp_path):
    result = run_deploy(session, recorder, bundle, tmp_path)
    s3 = session.client("s3")
    s3.create_bucket(Bucket="someone-elses-bucket",
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="someone-elses-bucket", Key="secret.txt", Body=b"x")
    role = session.client("iam").get_role(RoleName=f"gati-t1-{REGION}")["Role"]
    creds = session.client("sts").assume_role(
        RoleArn=role["Arn"], RoleSessionName="instance")["Credentials"]
    as_instance = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"], region_name=REGION).client("s3")
    bucket = result.plan.bucket
    with enable_iam_authentication():
        assert as_instance.get_object(Bucket=bucket, Key="bundle.tar.gz")["ContentLength"] > 0
        assert as_instance.get_object(Bucket=bucket, Key="deployment-secret")["ContentLength"] == 65
        assert {o["Key"] for o in as_instance.list_objects_v2(Bucket=bucket)["Contents"]} == {
            "bundle.tar.gz", "gati-0.1.0-py3-none-any.whl", "deployment-secret"}
        denied = [lambda: as_instance.get_object(Bucket="someone-elses-bucket", Key="secret.txt"),
                  lambda: as_instance.put_object(Bucket=bucket, Key="x", Body=b"x"),
                  lambda: as_instance.delete_object(Bucket=bucket, Key="bundle.tar.gz"),
                  lambda: as_instance.list_objects_v2(Bucket="someone-elses-bucket")]
        for call in denied:
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_the_deployment_secret_reaches_instances_through_their_role_only(session, recorder, bundle, tmp_path):
    result = run_deploy(session, recorder, bundle, tmp_path)
    s3 = session.client("s3")
    obj = s3.get_object(Bucket=result.plan.bucket, Key="deployment-secret")
    secret = obj["Body"].read().decode().strip()
    assert len(secret) == 64 and int(secret, 16) and obj["ServerSideEncryption"] == "AES256"
    for inst in instances(session, "t1"):  # user data fetches it with the role and writes it 0600
        script = user_data(session, inst["InstanceId"])
        assert secret not in script
        assert 'Key="deployment-secret"' in script and '"/opt/gati/secret", os.O_WRONLY' in script
        assert "0o600" in script and "chown -R gati: /opt/gati" in script
    shown = result.inventory_file.read_text() + "\n".join(recorder.lines) + json.dumps(
        result.plan.instances[0].config)
    assert secret not in shown
    # A second deployment gets a secret of its own.
    other = run_deploy(session, recorder, bundle, tmp_path, name="t2")
    assert s3.get_object(Bucket=other.plan.bucket, Key="deployment-secret")["Body"].read().decode().strip() != secret


def test_bucket_is_private_encrypted_tagged(session, recorder, bundle, tmp_path):
    bucket = run_deploy(session, recorder, bundle, tmp_path).plan.bucket
    s3 = session.client("s3")
    assert bucket == f"gati-t1-123456789012-{REGION}"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {"Key": "gati:deployment", "Value": "t1"} in s3.get_bucket_tagging(
        Bucket=bucket)["TagSet"]


def test_inventory_and_wait_use_the_launched_addresses(session, recorder, bundle, tmp_path):
    result = run_deploy(session, recorder, bundle, tmp_path)
    inv = json.loads(result.inventory_file.read_text())
    by_node = {e["node"]: e for e in inv["entries"]}
    for inst in instances(session, "t1"):
        entry = by_node[tags(inst)["gati:node"]]
        assert entry["instance_id"] == inst["InstanceId"]
        assert entry["private_ip"] == inst["PrivateIpAddress"]
        assert entry["public_ip"] == inst["PublicIpAddress"]
    assert by_node["aggregator"]["ports"] == {"aggregator": 9090, "aggregator_internal": 9096, "index": 9094,
                                              "metrics": 9100, "index_metrics": 9104}
    assert by_node["predictor-0"]["ports"] == {"predictor": 9092, "predictor_metrics": 9102}
    agg = by_node["aggregator"]
    assert [str(e) for e in recorder.pinged] == [f"{agg['public_ip']}:9090"]
    assert inv["endpoint"] == f"{agg['public_ip']}:9090"
    assert f"endpoint: {agg['public_ip']}:9090" in recorder.lines
    assert result.ready
    everything = result.inventory_file.read_text() + "\n".join(recorder.lines)
    assert FAKE_SECRET not in everything and "SecretAccessKey" not in everything


def test_addresses_avoid_ones_already_in_use(session, recorder, bundle, tmp_path):
    ec2 = session.client("ec2")
    subnet = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
    first = sorted(subnet["Subnets"], key=lambda s: s["AvailabilityZone"])[0]
    taken = ec2.run_instances(ImageId=session.client("ssm").get_parameter(
        Name="/gati/test/ami-id")["Parameter"]["Value"], MinCount=1, MaxCount=1,
        SubnetId=first["SubnetId"])["Instances"][0]["PrivateIpAddress"]
    run_deploy(session, recorder, bundle, tmp_path)
    ours = [i["PrivateIpAddress"] for i in instances(session, "t1")]
    assert taken not in ours and len(set(ours)) == 5
    assert all(i["SubnetId"] == first["SubnetId"] for i in instances(session, "t1"))


def test_second_deploy_with_the_same_name_refuses_and_creates_nothing(
        session, recorder, bundle, tmp_path):
    run_deploy(session, recorder, bundle, tmp_path)
    before = len(instances(session, "t1"))
    with pytest.raises(DeployError, match="'t1' already exists.*destroy-aws"):
        run_deploy(session, recorder, bundle, tmp_path)
    assert len(instances(session, "t1")) == before
    # another name deploys beside it
    run_deploy(session, recorder, bundle, tmp_path, name="t2")
    assert len(instances(session, "t2")) == 5


def test_unready_aggregator_is_reported(session, bundle, tmp_path):
    recorder = Recorder(ready=False)
    result = run_deploy(session, recorder, bundle, tmp_path)
    assert not result.ready
    assert any("did not answer" in line for line in recorder.lines)


def test_missing_bundle_fails_before_any_aws_resource(session, recorder, tmp_path):
    from gati.errors import BundleError

    with pytest.raises(BundleError, match="manifest.yaml"):
        run_deploy(session, recorder, tmp_path / "nope", tmp_path)
    assert instances(session, "t1") == []
    assert session.client("s3").list_buckets()["Buckets"] == []
