"""`gati serve` and `gati predict`: parse arguments and delegate (gati/cli.py calls `register`).

Both speak Thrift. They are always listed; where the thrift package is missing they fail with a
message naming it (gati.optional.require) instead of disappearing from the CLI.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from gati.rpc.config import ROLES, ClusterConfig

Command = Callable[[str, str, str, Callable[[argparse.Namespace], int | None]], argparse.ArgumentParser]


def register(command: Command) -> None:
    s = command("serve", "run one service of the cluster (or the whole engine: --role all)", """
gati serve --role all --config deploy/local.yaml
gati serve --role predictor --name predictor-0 --config deploy/local.yaml""", _serve)
    s.add_argument("--role", required=True, choices=ROLES, help="which service to run")
    s.add_argument("--config", required=True, help="cluster YAML (see deploy/local.yaml)")
    s.add_argument("--name", help="which entry of the config to run: a predictor (--role predictor) or an "
                   "executor replica (--role executor, when several are configured)")

    p = command("predict", "classify image files through a running aggregator",
                "gati predict --endpoint 127.0.0.1:9090 cat.png dog.jpg", _predict)
    p.add_argument("--endpoint", required=True, help="the aggregator's HOST:PORT")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF) of any size: the server "
                   "resizes them to the model's input")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")


def _thrift(purpose: str) -> None:
    from gati.optional import require
    require("thrift", "thrift", purpose)


def _serve(a: argparse.Namespace) -> None:
    _thrift("gati serve")
    from gati.rpc.config import load_config
    logging.getLogger("gati").setLevel(logging.INFO)  # service logs are what deploy-local keeps
    cfg = load_config(a.config)
    openmp_environment(cfg, a.role, a.name)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID`: every thread's stack into the service's log

    def announce(service, http) -> None:
        web = f", HTTP on {http.host}:{http.port}" if http is not None else ""
        internal = f", callbacks on {service.internal.host}:{service.internal.port}" if service.internal else ""
        print(f"gati serve: {service.name} ({a.role}) listening on {service.server.host}:{service.server.port}"
              f"{internal}{web}, pid {os.getpid()}", flush=True)

    # every role but the aggregator and the index imports torch (gati.rpc.model_roles): only now, with OpenMP set up
    from gati.rpc.roles import serve
    serve(a.role, cfg, a.name, announce)
    # Drained: every reply is written and the closers saved the state. Tearing the interpreter down (torch, FAISS,
    # the bundle) would take another second or more of CPU per service, and nothing is left to run.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def openmp_environment(cfg: ClusterConfig, role: str, name: str | None) -> None:
    """OpenMP reads its environment once, when torch (or FAISS) is imported: set it for this service first.

    Services share the host's cores (six processes on one machine in deploy-local; a predictor
    beside the aggregator on AWS). OpenMP's default lets idle threads spin on every core, so one busy
    neighbour multiplied the executor's p99 (docs/results.md); `omp_wait_policy: PASSIVE` makes them
    sleep, and each role gets its configured thread count.
    """
    if "torch" in sys.modules:
        logging.getLogger("gati.rpc").warning("torch was imported before the OpenMP environment was set")
    if cfg.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = cfg.omp_wait_policy
    threads = cfg.threads(role, name)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _predict(a: argparse.Namespace) -> int:
    _thrift("gati predict")
    from thrift.Thrift import TException

    from gati.errors import GatiError
    from gati.rpc.client import GatiClient, parse_endpoint
    host, port = parse_endpoint(a.endpoint)
    failed = 0
    with GatiClient(host, port, timeout_s=a.timeout) as client:
        for path in a.images:
            try:
                data = Path(path).read_bytes()
                p = client.predict_image(data)
            except (OSError, TException, GatiError) as e:
                failed += 1
                message = getattr(e, "message", None) or str(e)
                print(json.dumps({"image": path, "error": type(e).__name__, "message": message}) if a.json
                      else f"{path}: {type(e).__name__}: {message}", file=sys.stdout if a.json else sys.stderr)
                continue
            row = {"image": path, "label": p.label, "class": p.class_name, "confidence": round(p.confidence, 4),
                   "exit": p.exit_name, "stages_run": p.stages_run, "server_ms": round(p.server_ms, 3)}
            print(json.dumps(row) if a.json else
                  f"{path}: {p.class_name} (label {p.label}, confidence {p.confidence:.3f}, "
                  f"answered at {p.exit_name}, {p.stages_run} stages, {p.server_ms:.2f} ms)")
    return 1 if failed else 0
