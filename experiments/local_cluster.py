"""A local cluster for experiments: a config with fresh ports, started as processes, stopped whatever happens,
and closed-loop load from client threads that records every outcome.

Used by experiments/chaos.py, resilience.py and hop_delay.py. It writes only the config keys a run
asks for, so the same script can drive an older checkout (PYTHONPATH=that checkout) for a before/after.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from gati.rpc import launch
from gati.rpc.config import ClusterConfig, load_config


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_config(folder: Path, bundle: str | Path, *, executors: int = 1, predictors: int = 2, index: bool = True,
                 retrainer: bool = True, aggregator: dict | None = None, executor: dict | None = None,
                 retrainer_options: dict | None = None, **top: Any) -> Path:
    """A cluster of every service on 127.0.0.1 with free ports; `aggregator`/`executor`/`retrainer_options` add keys
    to those entries, `top` to the file (timeouts_ms, omp_wait_policy, ...). One executor is written as
    `executor:`."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = iter(free_ports(3 + 2 * (executors + predictors + index + retrainer)))

    def at() -> dict:
        return {"host": "127.0.0.1", "port": next(ports), "http_port": next(ports)}

    replicas = [{**at(), **(executor or {})} for _ in range(executors)]
    services: dict[str, Any] = {
        "aggregator": {**at(), "internal_port": next(ports), **(aggregator or {})},
        **({"executor": replicas[0]} if executors == 1 else {"executors": replicas}),
        "predictors": [{"name": f"predictor-{i}", **at(), "cuts": "auto"} for i in range(predictors)],
    }
    if index:
        services["index"] = at()
    if retrainer:
        services["retrainer"] = {**at(), **(retrainer_options or {})}
    raw = {"bundle": str(Path(bundle).resolve()), "log_dir": str(folder / "logs"), "secret_file": str(folder / "secret"),
           **top, "services": services}
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextmanager
def running(config: Path, timeout_s: float = 300.0) -> Iterator[tuple[ClusterConfig, dict[str, launch.Proc]]]:
    """The cluster's processes, unsupervised (the caller kills and restarts them), stopped on leaving."""
    cfg = load_config(config)
    procs = {p.name: p for p in launch.start(cfg, timeout_s)}
    try:
        yield cfg, procs
    finally:
        launch.stop_procs(list(procs.values()), grace_s=5)


@dataclass
class Outcomes:
    """What closed-loop clients got: latencies of answers, and failures by type."""
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, started: float, reply: Any = None, error: Exception | None = None, i: int = 0) -> None:
        """One request's outcome (`i`: the request's number, for subclasses that check answers)."""
        with self.lock:
            if error is None:
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.degraded += bool(getattr(reply, "degraded", False))
            else:
                name = type(error).__name__
                self.failures[name] = self.failures.get(name, 0) + 1

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {"seconds": round(self.seconds, 2), "answered": len(self.latencies_ms),
                "goodput_rps": round(len(self.latencies_ms) / max(self.seconds, 1e-9), 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "degraded": self.degraded, "failures": dict(sorted(self.failures.items()))}


def closed_loop(send: Callable[[Any, int], Any], make_client: Callable[[], Any], clients: int, seconds: float,
                outcomes: Outcomes | None = None, stop: threading.Event | None = None) -> Outcomes:
    """`clients` threads, each with its own client, calling `send(client, i)` back to back for `seconds`
    (or until `stop` is set). A thread that does not finish within 60 s of the end is a hung client."""
    out = outcomes or Outcomes()
    stop = stop or threading.Event()
    end = time.monotonic() + seconds

    def run(k: int) -> None:
        client = make_client()
        i = k
        try:
            while time.monotonic() < end and not stop.is_set():
                started = time.perf_counter()
                try:
                    out.record(started, send(client, i), i=i)
                except Exception as e:  # every failure is recorded by type; the run decides what it means
                    out.record(started, error=e, i=i)
                i += clients
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()) + 60)
    out.seconds = time.monotonic() - began
    hung = sum(t.is_alive() for t in threads)
    if hung:
        out.failures["hung_clients"] = hung
    return out
