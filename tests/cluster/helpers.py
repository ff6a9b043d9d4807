"""Test helpers: a cluster of real processes, the in-process engine's reference answers, load threads."""
from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from thrift.transport import TTransport

from gati.rpc import auth, launch
from gati.rpc.auth import Secret
from gati.rpc.client import GatiClient, status
from gati.rpc.config import ClusterConfig, load_config
from gati.rpc.gen.gati_idl.ttypes import Prediction, ServiceStatus
from gati.rpc.transport import protocol
from tests.threads import torch_threads

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Cluster:
    def __init__(self, config_path: Path):
        self.cfg: ClusterConfig = load_config(config_path)
        self.procs: dict[str, launch.Proc] = {}

    def start(self) -> "Cluster":
        self.procs = {p.name: p for p in launch.start(self.cfg, timeout_s=120)}
        return self

    def stop(self) -> None:
        launch.stop_procs(list(self.procs.values()), grace_s=5)

    @property
    def address(self) -> tuple[str, int]:
        return self.cfg.aggregator.host, self.cfg.aggregator.port

    def client(self, timeout_s: float = 10.0) -> GatiClient:
        return GatiClient(*self.address, timeout_s=timeout_s)

    @property
    def secret(self) -> Secret:
        return Secret.load(self.cfg.secret_file)

    def status(self, name: str) -> ServiceStatus:
        ep = self.cfg.endpoints()[name]
        return status(ep.host, ep.port, secret=self.secret if ep.internal else None)

    def http(self, name: str, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """GET a path from a service's HTTP port: (status, body), 5xx included."""
        ep = self.cfg.endpoints()[name]
        return http_get(f"http://{ep.host}:{ep.http_port}{path}", timeout_s)

    def metrics(self, name: str) -> Samples:
        """A service's /metrics, parsed: (sample name, sorted labels) -> value."""
        status, body = self.http(name, "/metrics")
        assert status == 200, body
        return parse_metrics(body.decode())

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, no draining."""
        self.signal(name, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while launch.alive(self.procs[name].pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self, *names: str) -> None:
        """Start services again on their configured ports, alone, and wait until they answer ping."""
        roles = dict(launch.roles(self.cfg))
        for name in names:
            self.procs[name] = launch.spawn(self.cfg, name, roles[name])
        launch.wait_ready([self.procs[n] for n in names], timeout_s=120, secret=self.secret)


@dataclass
class References:
    """What the in-process engine (and the full model) answer for each image."""
    labels: list[int]
    exits: list[str]
    base: list[int]
    stages: list[int]

    @classmethod
    def of(cls, bundle: Path, images: np.ndarray, mode: str | None = None) -> "References":
        """The engine's answers in `mode` (default: the plan's); async equals an executor with lookahead 1."""
        from gati.bundle import load_bundle
        from gati.runtime.engine import Engine
        with torch_threads(1):  # as the services run, so that answers near a threshold compare exactly
            b = load_bundle(bundle)
            engine = Engine(b, mode)
            x = b.preprocess(images)
            answers = [engine.predict(x[i:i + 1]) for i in range(len(x))]
            engine.close()
            base = [engine.predict_base(x[i:i + 1]) for i in range(len(x))]
        return cls([a.label for a in answers], [a.exit_name for a in answers], base, [a.stages_run for a in answers])


@dataclass
class Load:
    """Client threads sending images in a loop until stopped; every outcome is recorded."""
    cluster: Cluster
    images: np.ndarray
    threads: int = 2
    deadline_ms: int | None = None
    answers: list[tuple[int, Prediction]] = field(default_factory=list)
    errors: list[tuple[int, Exception]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Load":
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self._workers), "a client thread hung"

    def wait_for(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answers) + len(self.errors) < n:
            assert time.monotonic() < deadline, f"only {len(self.answers)} answers in {timeout_s} s"
            time.sleep(0.01)

    def _run(self, k: int) -> None:
        with self.cluster.client() as client:
            i = k
            while not self._stop.is_set():
                idx = i % len(self.images)
                try:
                    self.answers.append((idx, client.predict_pixels(self.images[idx], self.deadline_ms)))
                except Exception as e:  # recorded; the test decides what is acceptable
                    self.errors.append((idx, e))
                i += self.threads


def until(condition, timeout_s: float = 30.0, every_s: float = 0.05) -> None:
    """Poll `condition()` until it holds; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition still false after {timeout_s} s"
        time.sleep(every_s)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse_metrics(text: str) -> Samples:
    """Prometheus text format, read by the client library's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def answered(s: ServiceStatus) -> int:
    """Requests an aggregator answered: its latency histogram's count, all exits together."""
    return sum(v for k, v in s.counters.items() if k.startswith("request_duration_seconds.") and k.endswith(".count"))


def lookups(s: ServiceStatus, cut: str) -> int:
    """A predictor's lookups at a cut, whatever the verdict."""
    return sum(s.counters.get(f"lookups.{cut}.{verdict}", 0) for verdict in ("hit", "miss", "error"))


def stages_after_hit(samples: Samples) -> dict[str, float]:
    """The executor's histogram of stages run after a hit, as {bucket bound: count}."""
    return {dict(labels)["le"]: v for (name, labels), v in samples.items() if name == "gati_stages_after_hit_bucket"}


# ---- raw wire: what an attacker (or a broken peer) writes, byte by byte -------------------------

def message(client_cls: type, method: str, *args: Any) -> bytes:
    """The Thrift binary message a generated client writes for `method(*args)` (unframed)."""
    buf = TTransport.TMemoryBuffer()
    getattr(client_cls(protocol(buf, 1 << 30)), f"send_{method}")(*args)
    return buf.getvalue()


def frame(payload: bytes, declared: int | None = None) -> bytes:
    """A frame: its 4-byte size (`declared`, to lie about it) and the payload."""
    return (len(payload) if declared is None else declared).to_bytes(4, "big") + payload


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """The peer closed (or reset) the connection within `within_s`; data it sends is skipped."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def handshake(sock: socket.socket, secret: Secret) -> auth.Session:
    """The client's side of gati/rpc/auth.py's handshake over a raw socket."""
    sent = auth.hello()
    sock.sendall(sent.data)
    challenge = b""
    while len(challenge) < auth.CHALLENGE_SIZE:
        challenge += sock.recv(auth.CHALLENGE_SIZE - len(challenge))
    proof, session = auth.prove(secret, sent, challenge)
    sock.sendall(proof)
    return session


@contextmanager
def frozen(cluster: Cluster, *names: str):
    """SIGSTOP services (slow: alive, silent) for the body; SIGCONT whatever happens."""
    for name in names:
        cluster.signal(name, signal.SIGSTOP)
    try:
        yield
    finally:
        for name in names:
            cluster.signal(name, signal.SIGCONT)


def cache_with_outputs(path: Path, change: Callable[[torch.Tensor], torch.Tensor]) -> bytes:
    """The cache file at `path` with `change` applied to its output layer (the last weight matrix, and every vector
    of its length): rolled by one class it is confidently wrong; doubled, the same labels at other confidences."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob["state"]
    out_rows = [k for k, v in state.items() if v.dim() == 2][-1]
    n = state[out_rows].shape[0]
    for k, v in state.items():
        if k == out_rows or (v.dim() == 1 and v.shape[0] == n):
            state[k] = change(v)
    buf = io.BytesIO()
    torch.save(blob, buf)
    return buf.getvalue()
