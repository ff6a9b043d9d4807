"""A local cluster for cluster rows: deploy/local.yaml's services as real processes, on free ports, stopped after.

As `experiments/hop_delay.py` runs it: a copy of deploy/local.yaml pointing at the row's bundle and device, with
`hop_delay_ms` (the transport sleeps that long before every message a client sends and before it reads a
reply: one network hop each way), its own secret and logs in a private folder, started and stopped with
`gati.rpc.launch`. Ports are picked free at start, so runs never collide with other clusters on the machine.
A frozen row's retrainer never refits and it has no online tier; an online row's refits as its preset's learning
says, with deploy/local.yaml's online tier.
"""
from __future__ import annotations

import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from gati.rpc import launch
from gati.rpc.auth import Secret
from gati.rpc.client import status
from gati.rpc.config import ClusterConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("aggregator", "executor", "index", "retrainer")


def free_ports(n: int) -> list[int]:
    """n distinct ports that nothing listens on now (all held open together while they are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Refits:
    """An online row's learning in the cluster: the aggregator's coin and the retrainer's automatic refits."""
    sample_rate: float
    refit_every: int
    select_samples: int
    certify_samples: int


def cluster_config(bundle: Path, device: str, hop_delay_ms: float, folder: Path, refits: Refits | None = None) -> Path:
    """deploy/local.yaml for this bundle, device and delay, on free ports, its secret and logs under `folder`;
    the retrainer refits as `refits` says, or never (a frozen row: its caches stay the bundle's)."""
    cfg = yaml.safe_load((REPO / "deploy" / "local.yaml").read_text())
    cfg.update(bundle=str(Path(bundle).resolve()), device=device, hop_delay_ms=float(hop_delay_ms),
               log_dir=str(folder / "logs"), secret_file=str(folder / "secret"),
               state_dir=str(folder / "state"))  # its own: versions one row learned must not serve the next
    services = cfg["services"]
    if refits is None:  # frozen: the bundle's caches only, no online tier learning beside them
        services["retrainer"].update(refit_every=0, refit_seconds=0)
        cfg.pop("tier", None)
    else:
        services["aggregator"]["sample_rate"] = refits.sample_rate
        services["retrainer"].update(refit_every=refits.refit_every, select_samples=refits.select_samples,
                                     certify_samples=refits.certify_samples)
    listed = [services[name] for name in SERVICES] + services["predictors"]
    ports = iter(free_ports(len(listed) + 1))
    for service in listed:
        service["port"] = next(ports)
        service.pop("http_port", None)  # health and metrics are not what a row measures
    services["aggregator"]["internal_port"] = next(ports)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass(frozen=True)
class Running:
    endpoint: str       # the aggregator's public HOST:PORT
    cfg: ClusterConfig

    def learning_counters(self) -> dict[str, float]:
        """What the retrainer counted (joint samples, reviews by outcome, live fallbacks pushed, ...) and its gauges
        (cache versions), with the aggregator's live bound and fallbacks asked (`aggregator.live_*`)."""
        ep, front = self.cfg.retrainer, self.cfg.aggregator
        got = status(ep.host, ep.port, timeout_s=10.0, secret=Secret.load(self.cfg.secret_file))
        door = status(front.host, front.port, timeout_s=10.0)  # the public port serves status
        live = {f"aggregator.{k}": v for k, v in {**door.counters, **door.gauges}.items() if k.startswith("live_")}
        return {**got.counters, **got.gauges, **live}


@contextmanager
def local_cluster(bundle: Path, device: str, hop_delay_ms: float, refits: Refits | None = None) -> Iterator[Running]:
    """The running cluster (its endpoint and configuration); every process is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="gati-sweep-") as tmp:
        cfg = load_config(cluster_config(bundle, device, hop_delay_ms, Path(tmp), refits))
        procs = launch.start(cfg)
        try:
            yield Running(cfg.aggregator.address, cfg)
        finally:
            launch.stop_procs(procs)
