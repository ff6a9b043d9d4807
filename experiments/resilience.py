"""Issue 14's measurements on a local cluster, each printed as one JSON object.

    # goodput under overload: many clients sending encoded images into a small queue
    python experiments/resilience.py overload --bundle /work/bundles/resilience-tiny3 --clients 32
    # batch-1 latency with a busy neighbour process on the host, for an OpenMP wait policy and thread count
    python experiments/resilience.py neighbour --bundle bundles/r18 --omp-wait-policy "" --threads 0
    # throughput with one and with two executor replicas behind the aggregator
    python experiments/resilience.py replicas --bundle bundles/r18 --clients 8

`overload` runs whatever `gati` is on PYTHONPATH, and writes only keys every version reads, so the
same command measures an older checkout (`PYTHONPATH=/path/to/old`) for a before/after.
Timings from a shared machine are rough: say so where they are quoted.
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_cluster import closed_loop, running, write_config  # noqa: E402

from gati.data import load_split  # noqa: E402
from gati.measure.environment import environment  # noqa: E402
from gati.rpc.client import GatiClient  # noqa: E402


def images(data_dir: str, n: int) -> np.ndarray:
    return load_split("cifar10", data_dir, "test:eval").images[:n]


def encoded(pixels: np.ndarray, size: int) -> bytes:
    """A PNG of the image enlarged to size x size: decoding and resizing it is real work for the aggregator."""
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


def client_for(cfg):
    return lambda: GatiClient(cfg.aggregator.host, cfg.aggregator.port, timeout_s=30)


def overload(a: argparse.Namespace) -> dict:
    payloads = [encoded(img, a.image_size) for img in images(a.data_dir, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), a.bundle, index=False, retrainer=False, predictors=1,
                              aggregator={"queue_size": a.queue_size, "workers": a.workers, "sample_rate": 0.0})
        with running(config) as (cfg, _):
            closed_loop(lambda c, i: c.predict_image(payloads[i % len(payloads)]), client_for(cfg), 1, 2.0)  # warm
            out = closed_loop(lambda c, i: c.predict_image(payloads[i % len(payloads)]), client_for(cfg),
                              a.clients, a.seconds)
    return {"experiment": "overload", "clients": a.clients, "queue_size": a.queue_size, "workers": a.workers,
            "image_size": a.image_size, **out.summary()}


def neighbour(a: argparse.Namespace) -> dict:
    pixels = images(a.data_dir, 200)
    top = {"omp_wait_policy": a.omp_wait_policy}
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), a.bundle, index=False, retrainer=False, executor={"threads": a.threads},
                              aggregator={"sample_rate": 0.0}, **top)
        with running(config) as (cfg, _):
            send = lambda c, i: c.predict_pixels(pixels[i % len(pixels)])  # noqa: E731
            closed_loop(send, client_for(cfg), 1, 3.0)  # warm
            rows = {}
            for busy in (False, True):
                neighbour_proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
                try:
                    rows["busy neighbour" if busy else "quiet"] = closed_loop(send, client_for(cfg), 1,
                                                                              a.seconds).summary()
                finally:
                    if neighbour_proc is not None:
                        neighbour_proc.kill()
                        neighbour_proc.wait()
    return {"experiment": "neighbour", "omp_wait_policy": a.omp_wait_policy or "(OpenMP default)",
            "executor_threads": a.threads or "(torch default)", "rows": rows}


def replicas(a: argparse.Namespace) -> dict:
    pixels = images(a.data_dir, 500)
    rows = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(Path(tmp), a.bundle, executors=n, index=False, retrainer=False,
                                  executor={"threads": a.threads, "workers": 2},
                                  aggregator={"sample_rate": 0.0, "workers": 8})
            with running(config) as (cfg, _):
                send = lambda c, i: c.predict_pixels(pixels[i % len(pixels)])  # noqa: E731
                closed_loop(send, client_for(cfg), a.clients, 3.0)  # warm
                rows[f"{n} executor{'s' if n > 1 else ''}"] = closed_loop(send, client_for(cfg), a.clients,
                                                                          a.seconds).summary()
    return {"experiment": "replicas", "clients": a.clients, "executor_threads": a.threads, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=("overload", "neighbour", "replicas"))
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--queue-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--omp-wait-policy", default="PASSIVE", help='PASSIVE, ACTIVE, or "" (OpenMP\'s default)')
    p.add_argument("--threads", type=int, default=1, help="executor torch threads (0: torch's default)")
    a = p.parse_args()
    started = time.time()
    result = {"overload": overload, "neighbour": neighbour, "replicas": replicas}[a.experiment](a)
    print(json.dumps({**result, "wall_s": round(time.time() - started, 1), "environment": environment()}))


if __name__ == "__main__":
    main()
