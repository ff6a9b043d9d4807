"""deploy/aws.py end to end against moto: deploy, status, destroy through the command line."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.aws.conftest import AMI_PARAMETER, CIDR, FAKE_SECRET, REGION, Recorder
from tests.aws.test_deploy import instances
from tests.aws.test_plan import ROOT, load_cli


def write_config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "deploy" / "aws.yaml").read_text())
    raw.update(region=REGION, ami={"ssm_parameter": AMI_PARAMETER}, allowed_cidr="auto")
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_deploy_status_destroy_through_the_cli(session, bundle, tmp_path, capsys):
    cli, recorder = load_cli(), Recorder()
    common = ["--config", str(write_config(tmp_path)), "--name", "cli",
              "--inventory-dir", str(tmp_path / "inv")]
    assert cli.main(["deploy", "--bundle", str(bundle), *common], recorder.hooks()) == 0
    inventory = tmp_path / "inv" / f"aws-cli-{REGION}.json"
    assert inventory.is_file() and len(instances(session, "cli")) == 5
    group = session.client("ec2").describe_security_groups(GroupNames=["gati-cli"])
    cidrs = {r["CidrIp"] for p in group["SecurityGroups"][0]["IpPermissions"]
             for r in p["IpRanges"]}
    assert cidrs == {"203.0.113.9/32"} != {CIDR}   # `auto` became this machine's /32

    assert cli.main(["deploy", "--bundle", str(bundle), *common], recorder.hooks()) == 1
    assert "already exists" in capsys.readouterr().err

    recorder.lines.clear()
    assert cli.main(["status", *common], recorder.hooks()) == 0
    assert sum("running" in line for line in recorder.lines) == 5
    assert recorder.lines[-1].endswith("answers ping")

    assert cli.main(["destroy", "--dry-run", *common], recorder.hooks()) == 0
    assert len(instances(session, "cli")) == 5 and inventory.is_file()
    assert cli.main(["destroy", *common], recorder.hooks()) == 0
    assert instances(session, "cli") == [] and not inventory.exists()
    assert any(line.startswith("removed bucket gati-cli-") for line in recorder.lines)
    assert FAKE_SECRET not in "\n".join(recorder.lines) + capsys.readouterr().out
