"""`make deploy-local`'s script (start, status, stop) and `gati serve --role all`."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gati.rpc import launch
from gati.rpc.auth import Secret
from gati.rpc.client import GatiClient, ping, status
from gati.rpc.config import load_config
from tests.cluster.conftest import CLUSTER_PORTS, free_ports, write_config
from tests.cluster.helpers import answered, http_get, until

REPO = Path(__file__).resolve().parents[2]


def deploy(action: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "deploy" / "local.py"), action, "--config", str(config)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)


@pytest.fixture
def config(tmp_path, cluster_bundle, request) -> Path:
    path = write_config(tmp_path / "local.yaml", cluster_bundle, free_ports(CLUSTER_PORTS))
    request.addfinalizer(lambda: launch.stop(load_config(path), grace_s=5))  # whatever the test left running
    return path


def test_deploy_local_starts_every_service_and_stop_local_stops_exactly_those(config):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        up = deploy("start", config)
        assert up.returncode == 0, up.stderr
        cfg = load_config(config)
        pidfile = Path(cfg.log_dir) / launch.PIDFILE
        procs = launch.read_pidfile(pidfile)
        assert {p.name for p in procs} == set(cfg.endpoints())
        secret = Secret.load(cfg.secret_file)  # created by deploy-local, readable by its owner only
        assert stat.S_IMODE(cfg.secret_file.stat().st_mode) == 0o600 and str(cfg.secret_file) in up.stdout
        for p in procs:  # endpoints and log paths are printed; every service answers ping
            assert p.endpoint in up.stdout and p.log in up.stdout
            assert p.answers(secret) and Path(p.log).exists()
        internal = [p for p in procs if p.role != "aggregator"]
        assert not any(ping(p.host, p.port) for p in internal)  # without the secret: no answer
        assert len({status(p.host, p.port, secret=None if p.role == "aggregator" else secret).pid
                    for p in procs}) == len(procs)
        until(lambda: deploy("status", config).returncode == 0, timeout_s=30)  # every service up and ready
        report = deploy("status", config).stdout
        assert all(f"{name} " in report for name in cfg.endpoints()) and report.count(" ready") == len(procs)
        supervisor = launch.read_supervisor(pidfile)
        assert f"supervisor   pid {supervisor}" in report and report.count("restarts 0") == len(procs)

        again = deploy("start", config)
        assert again.returncode == 1 and "already running" in again.stderr

        # A crash: the supervisor starts the service again, logs it, and status counts it.
        crashed = next(p for p in procs if p.name == "predictor-1")
        os.killpg(crashed.pid, signal.SIGKILL)
        until(lambda: launch.read_pidfile(pidfile)[[p.name for p in procs].index("predictor-1")].restarts == 1,
              timeout_s=30)
        restarted = next(p for p in launch.read_pidfile(pidfile) if p.name == "predictor-1")
        assert restarted.pid != crashed.pid
        until(lambda: restarted.answers(secret), timeout_s=60)
        assert "restarts 1" in deploy("status", config).stdout
        log = (Path(cfg.log_dir) / "supervisor.log").read_text()
        assert f"predictor-1 (pid {crashed.pid}) exited (killed by SIGKILL)" in log and "predictor-1 restarted" in log

        down = deploy("stop", config)
        assert down.returncode == 0 and f"stopped {len(procs)} processes" in down.stdout
        assert not any(launch.alive(p.pid) for p in [*procs, restarted]) and not pidfile.exists()
        assert not launch.alive(supervisor)
        assert bystander.poll() is None  # only what deploy-local started was stopped
    finally:
        bystander.kill()
        bystander.wait()


def test_deploy_local_names_a_missing_bundle(tmp_path):
    path = write_config(tmp_path / "local.yaml", tmp_path / "no-bundle", free_ports(CLUSTER_PORTS))
    out = deploy("start", path)
    assert out.returncode == 1 and "no-bundle does not exist" in out.stderr and "gati build" in out.stderr


def test_role_all_serves_the_engine_behind_the_same_front_door(config, eval_images, references):
    cfg = load_config(config)
    proc = launch.spawn(cfg, "aggregator", "all")
    try:
        launch.wait_ready([proc], timeout_s=120)
        with GatiClient(cfg.aggregator.host, cfg.aggregator.port) as client:
            got = [client.predict_pixels(img) for img in eval_images[:40]]
            s = client.status()
        assert [(p.label, p.exit_name) for p in got] == list(zip(references.labels[:40], references.exits[:40]))
        assert s.role == "aggregator" and s.pid == proc.pid and answered(s) == 40
        # the same engine over the Open Inference Protocol, in its plain JSON form (what curl sends)
        base = f"http://{cfg.aggregator.host}:{cfg.aggregator.http_port}"
        assert http_get(f"{base}/health/ready")[0] == 200
        pixels = eval_images[0].transpose(2, 0, 1)
        body = {"id": "one", "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, *pixels.shape],
                                         "data": pixels.ravel().tolist()}]}
        request = urllib.request.Request(f"{base}/v2/models/{cfg.bundle.name}/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert reply["id"] == "one" and reply["model_name"] == cfg.bundle.name
        assert {o["name"]: o["data"] for o in reply["outputs"]}["label"] == [references.labels[0]]
        assert reply["parameters"]["exit_name"] == references.exits[0] and reply["parameters"]["compute_ms"] > 0
        os.killpg(proc.pid, signal.SIGTERM)  # drains and exits
        assert os.waitpid(proc.pid, 0)[1] == 0
    finally:
        launch.stop_procs([proc], grace_s=5)

