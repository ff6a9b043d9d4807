"""`destroy` removes exactly what carries the deployment's tags, and nothing else."""
from __future__ import annotations

from typing import Any

from gati.cloud.aws import status
from gati.cloud.destroy import destroy
from tests.aws.conftest import REGION, make_spec
from tests.aws.test_deploy import instances, run_deploy


def live_state(session: Any) -> dict[str, set[str]]:
    ec2, s3, iam = (session.client(s) for s in ("ec2", "s3", "iam"))
    return {
        "instances": {i["InstanceId"] for r in ec2.describe_instances(Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
            for i in r["Instances"]},
        "groups": {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]},
        "buckets": {b["Name"] for b in s3.list_buckets()["Buckets"]},
        "roles": {r["RoleName"] for r in iam.list_roles()["Roles"]},
        "profiles": {p["InstanceProfileName"] for p in
                     iam.list_instance_profiles()["InstanceProfiles"]},
    }


def test_destroy_removes_only_this_deployment(session, recorder, bundle, tmp_path):
    ours = run_deploy(session, recorder, bundle, tmp_path, name="t1")
    run_deploy(session, recorder, bundle, tmp_path, name="t2")
    # an unrelated instance tagged by hand with another deployment's name, and an untagged one
    ec2 = session.client("ec2")
    ami = ours.plan.resolved.ami_id
    stranger = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": "gati:deployment", "Value": "t1-other"}]}]
    )["Instances"][0]["InstanceId"]
    untagged = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    before = live_state(session)
    t1_ids = {i["InstanceId"] for i in instances(session, "t1")}

    removed = destroy(make_spec("t1"), session, recorder.slept.append, waiter_delay_s=1)

    after = live_state(session)
    assert {i["InstanceId"] for i in removed.instances} == t1_ids
    assert after["instances"] == before["instances"] - t1_ids
    assert {stranger, untagged} <= after["instances"]
    assert len(instances(session, "t2")) == 5
    assert before["groups"] - after["groups"] == {"gati-t1"}
    assert before["buckets"] - after["buckets"] == {ours.plan.bucket}
    assert before["roles"] - after["roles"] == {f"gati-t1-{REGION}"}
    assert before["profiles"] - after["profiles"] == {f"gati-t1-{REGION}"}
    assert f"gati-t2-{REGION}" in after["roles"] and "gati-t2" in after["groups"]
    # nothing of t1 is left, so it can be deployed again
    assert destroy(make_spec("t1"), session, recorder.slept.append).empty()
    run_deploy(session, recorder, bundle, tmp_path, name="t1")
    assert len(instances(session, "t1")) == 5


def test_destroy_dry_run_lists_and_keeps(session, recorder, bundle, tmp_path):
    run_deploy(session, recorder, bundle, tmp_path)
    before = live_state(session)
    found = destroy(make_spec("t1"), session, recorder.slept.append, dry_run=True)
    assert len(found.instances) == 5 and len(found.buckets) == 1
    assert any(line.startswith("role gati-t1-") for line in found.describe())
    assert live_state(session) == before


def test_status_reports_instances_and_pings_the_aggregator(session, recorder, bundle, tmp_path):
    inv = run_deploy(session, recorder, bundle, tmp_path).inventory
    recorder.pinged.clear()
    rows = status(make_spec("t1"), session, recorder.hooks())
    assert sorted(r["node"] for r in rows) == [
        "aggregator", "executor", "predictor-0", "predictor-1", "retrainer"]
    assert all(r["state"] == "running" for r in rows)
    assert [str(e) for e in recorder.pinged] == [inv.endpoint]
    destroy(make_spec("t1"), session, recorder.slept.append, waiter_delay_s=1)
    assert status(make_spec("t1"), session, recorder.hooks()) == []


def test_destroy_of_an_unknown_deployment_touches_nothing(session, recorder, bundle, tmp_path):
    run_deploy(session, recorder, bundle, tmp_path, name="t2")
    before = live_state(session)
    assert destroy(make_spec("t1"), session, recorder.slept.append).empty()
    assert live_state(session) == before
