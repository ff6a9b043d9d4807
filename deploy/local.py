#!/usr/bin/env python3
"""`make deploy-local` / `make stop-local`: the cluster of deploy/local.yaml as local processes.

    python deploy/local.py start [--config deploy/local.yaml]   # waits until all answer ping
    python deploy/local.py stop  [--config deploy/local.yaml]   # exactly what start recorded
    python deploy/local.py status [--config deploy/local.yaml]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gati.errors import GatiError  # noqa: E402
from gati.rpc import launch  # noqa: E402
from gati.rpc.auth import Secret  # noqa: E402
from gati.rpc.client import ping  # noqa: E402
from gati.rpc.config import load_config  # noqa: E402


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
            procs = launch.start(cfg, a.timeout)
            print(f"GATI cluster up ({len(procs)} processes); pid file {Path(cfg.log_dir) / launch.PIDFILE}")
            print(f"  calls between services are signed with the secret in {cfg.secret_file} (mode 0600); "
                  f"clients need none")
            for proc in procs:
                print(f"  {proc.name:<12} {proc.endpoint:<16} pid {proc.pid:<7} log {proc.log}")
            print(f"  {'(callbacks)':<12} {cfg.aggregator.callbacks.address:<16} the aggregator's internal port")
            if cfg.aggregator.metrics_port:
                print(f"  metrics      http://{cfg.aggregator.host}:{cfg.aggregator.metrics_port}/metrics")
            print(f"try: gati predict --endpoint {cfg.aggregator.address} IMAGE.png")
        elif a.action == "stop":
            stopped = launch.stop(cfg)
            print(f"stopped {len(stopped)} processes" + (f": {', '.join(p.name for p in stopped)}" if stopped else ""))
        else:
            secret = Secret.load(cfg.secret_file)
            for name, ep in cfg.endpoints().items():
                up = ping(ep.host, ep.port, 0.5, secret if ep.internal else None)
                print(f"  {name:<12} {ep.address:<16} {'up' if up else 'DOWN'}")
    except GatiError as e:
        print(f"deploy-local: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
