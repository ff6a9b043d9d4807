#!/usr/bin/env python3
"""`make deploy-local` / `make stop-local` / `make status-local`: the cluster of deploy/local.yaml
as local processes.

    python deploy/local.py start [--config deploy/local.yaml]   # waits until all answer ping
    python deploy/local.py stop  [--config deploy/local.yaml]   # exactly what start recorded
    python deploy/local.py status [--config deploy/local.yaml]  # up? ready (/health/ready)? restarts?

`start` leaves a supervisor behind (gati/rpc/supervise.py): a service that crashes is started
again, with a backoff, and logged in <log_dir>/supervisor.log; `stop` stops it and the services.

Exit codes: 0 done (status: every service up and ready), 1 a failure (named on stderr), 2 a usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gati.errors import GatiError  # noqa: E402
from gati.rpc import launch  # noqa: E402
from gati.rpc.auth import Secret  # noqa: E402
from gati.rpc.client import ping  # noqa: E402
from gati.rpc.config import Endpoint, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--config", default=str(Path(__file__).with_name("local.yaml")))
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every service")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config)
        if a.action == "start":
            if not cfg.bundle.is_dir():
                raise GatiError(f"bundle {cfg.bundle} does not exist: run `gati build ... --out {cfg.bundle}` "
                                f"first, or point `bundle:` in {a.config} at one")
            supervisor, procs = launch.start_supervised(cfg, a.timeout)
            log_dir = Path(cfg.log_dir)
            print(f"GATI cluster up ({len(procs)} processes, supervised by pid {supervisor}: crashed services are "
                  f"restarted, see {log_dir / 'supervisor.log'}); pid file {log_dir / launch.PIDFILE}")
            print(f"  calls between services are signed with the secret in {cfg.secret_file} (mode 0600); "
                  f"clients need none")
            endpoints = cfg.endpoints()
            for proc in procs:
                print(f"  {proc.name:<12} {proc.endpoint:<16} {_http(endpoints[proc.name]):<24} pid {proc.pid:<7} "
                      f"log {proc.log}")
            print(f"  {'(callbacks)':<12} {cfg.aggregator.callbacks.address:<16} the aggregator's internal port")
            print(f"try: gati predict --endpoint {cfg.aggregator.address} IMAGE.png")
            if cfg.aggregator.http_port:
                print(f"     curl -s {_http(cfg.aggregator)}/metrics;  make status-local")
        elif a.action == "stop":
            stopped = launch.stop(cfg)
            print(f"stopped {len(stopped)} processes" + (f": {', '.join(p.name for p in stopped)}" if stopped else ""))
        else:
            return status(cfg)
    except GatiError as e:
        print(f"deploy-local: error: {e}", file=sys.stderr)
        return 1
    return 0


def status(cfg) -> int:
    """One line per service: Thrift up or DOWN, what its /health/ready says, and how often the
    supervisor restarted it."""
    healthy = True
    secret = Secret.load(cfg.secret_file)
    pidfile = Path(cfg.log_dir) / launch.PIDFILE
    recorded = {p.name: p for p in launch.read_pidfile(pidfile)} if pidfile.exists() else {}
    supervisor = launch.read_supervisor(pidfile) if pidfile.exists() else None
    print(f"  supervisor   {'pid ' + str(supervisor) if supervisor and launch.alive(supervisor) else 'not running'}")
    for name, ep in cfg.endpoints().items():
        up = ping(ep.host, ep.port, 0.5, secret if ep.internal else None)
        ready, reason = _ready(ep) if ep.http_port else (up, "no http_port configured")
        healthy &= up and ready
        restarts = f"restarts {recorded[name].restarts}" if name in recorded else ""
        print(f"  {name:<12} {ep.address:<16} {'up' if up else 'DOWN':<5} {'ready' if ready else 'NOT READY':<10} "
              f"{restarts:<11} {'' if reason == 'ready' else reason}".rstrip())
    return 0 if healthy else 1


def _http(ep: Endpoint) -> str:
    return f"http://{ep.host}:{ep.http_port}" if ep.http_port else "(no http_port)"


def _ready(ep: Endpoint) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"{_http(ep)}/health/ready", timeout=2) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    except (OSError, ValueError) as e:
        return False, f"HTTP: {getattr(e, 'reason', e)}"
    try:
        answer = json.loads(body)
        return bool(answer["ready"]), str(answer["reason"])
    except (ValueError, KeyError, TypeError):
        return False, "HTTP: not a GATI health answer"


if __name__ == "__main__":
    sys.exit(main())
