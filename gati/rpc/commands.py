"""`gati serve`, `gati predict`, `gati bench`: parse arguments and delegate (gati/cli.py calls `register`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from gati.rpc.roles import ROLES

    s = sub.add_parser("serve", help="run one service of the cluster (or the whole engine: --role all)")
    s.add_argument("--role", required=True, choices=ROLES)
    s.add_argument("--config", required=True, help="cluster YAML (see deploy/local.yaml)")
    s.add_argument("--name", help="which predictor entry of the config to run (--role predictor)")
    s.set_defaults(func=_serve)

    p = sub.add_parser("predict", help="classify image files through a running aggregator")
    p.add_argument("--endpoint", required=True, help="the aggregator's HOST:PORT")
    p.add_argument("images", nargs="+", help="PNG/JPEG files")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.set_defaults(func=_predict)

    b = sub.add_parser("bench", help="load-test the in-process engine or a cluster with real images")
    b.add_argument("--bundle", required=True, help="reference answers (and the engine without --endpoint)")
    b.add_argument("--endpoint", help="an aggregator's HOST:PORT; omitted: the in-process engine")
    b.add_argument("--data-dir", required=True)
    b.add_argument("--dataset", help="default: the dataset the bundle was built for")
    b.add_argument("--split", default="test:eval")
    b.add_argument("--limit", type=int, default=500)
    b.add_argument("--concurrency", type=int, default=1)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    b.set_defaults(func=_bench)


def _serve(a: argparse.Namespace) -> None:
    from gati.rpc.config import load_config
    from gati.rpc.roles import serve
    logging.getLogger("gati").setLevel(logging.INFO)  # service logs are what deploy-local keeps
    cfg = load_config(a.config)

    def announce(service) -> None:
        import os
        internal = f" (callbacks on {service.internal.host}:{service.internal.port})" if service.internal else ""
        print(f"gati serve: {service.name} ({a.role}) listening on {service.server.host}:{service.server.port}"
              f"{internal} pid {os.getpid()}", flush=True)

    serve(a.role, cfg, a.name, announce)


def _predict(a: argparse.Namespace) -> None:
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
    if failed:
        raise SystemExit(1)


def _bench(a: argparse.Namespace) -> None:
    from gati.measure.bench import BenchConfig, format_table, run_bench
    r = run_bench(BenchConfig(bundle=Path(a.bundle), data_dir=Path(a.data_dir), split=a.split, limit=a.limit,
                              concurrency=a.concurrency, endpoint=a.endpoint, dataset=a.dataset, warmup=a.warmup,
                              timeout_s=a.timeout, seed=a.seed))
    print(json.dumps(r.to_dict()) if a.json else format_table(r))
