"""Chaos and security, the long run (issue 14): a supervised local cluster under load while its services
are killed in turn and attackers send forged callbacks, oversized frames and floods of idle connections.

    python experiments/chaos.py --bundle /work/bundles/resilience-tiny3 --minutes 30 --out chaos.json
    python experiments/chaos.py --bundle ... --minutes 2.5 --period 15      # a short check that it works

The cluster (two executor replicas, two predictors, the index and the retrainer) runs under the
supervisor of `make deploy-local` (gati/rpc/supervise.py). Every `--period` seconds the next service
in a rotation is SIGKILLed; the supervisor restarts it. `--clients` threads send test:eval images
back to back the whole time, each request with the default deadline. It reports, as one JSON object:

- outcomes: answered, degraded (the reply says a cut's verdict was missing), failures by type,
  `lost` (a transport failure between client and aggregator: no answer and no typed error; only
  while the aggregator itself is down), `hung` (a request that took longer than its deadline allows,
  or a client thread that never came back);
- kills: each victim, when it was killed and when it answered ping again; the failures by type
  while it was down (until 1 s after it came back);
- attacks: forged `finished`/`shadowed` sent to the public port (they must change no answer: every
  answer is checked against the in-process engine's or, degraded, the full model's), 16 MB frames
  declared to `predict`, idle-connection floods, and whether predict kept answering meanwhile;
- live: the aggregator's live bound on agreement at the end and the fallbacks it asked for (gati/rpc/live.py: when
  the traffic's agreement is below the target, every answer after the fallback is the full model's);
- rss_mb: every service's resident memory every `--sample-every` seconds (flat over a soak, or not), with the
  retrainer's samples held per cut (its memory grows until its rings are full: `--max-sample-mb` fills them early);
- restarts: the supervisor's count per service.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from thrift.transport import TTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_cluster import Outcomes, closed_loop, write_config  # noqa: E402

from gati.bundle import load_bundle  # noqa: E402
from gati.data import load_split  # noqa: E402
from gati.measure.environment import environment  # noqa: E402
from gati.rpc import launch  # noqa: E402
from gati.rpc.auth import Secret  # noqa: E402
from gati.rpc.client import GatiClient, status  # noqa: E402
from gati.rpc.config import ClusterConfig, load_config  # noqa: E402
from gati.rpc.gen.gati_idl import Aggregator  # noqa: E402
from gati.rpc.gen.gati_idl.ttypes import ExecutionResult, Request, ShadowResult  # noqa: E402
from gati.rpc.transport import PeerUnavailable, protocol  # noqa: E402
from gati.runtime.engine import Engine  # noqa: E402

ROTATION = ("predictor-0", "executor-0", "index", "predictor-1", "executor-1", "retrainer", "aggregator")


@dataclass
class Kill:
    victim: str
    killed_at: float
    back_at: float | None = None
    failures: dict[str, int] = field(default_factory=dict)


class Checked(Outcomes):
    """Outcomes whose answers are checked: a cache's answer against the in-process engine's, the full model's
    (a miss, a degraded answer, every answer after the live bound's fallback) against the full model's."""

    def __init__(self, labels: list[int], base: list[int], max_s: float):
        super().__init__()
        self.labels, self.base, self.max_s = labels, base, max_s
        self.wrong = 0
        self.hung = 0
        self.events: list[tuple[float, str]] = []  # (time, failure type), for the kills' windows

    def expected(self, reply, idx: int) -> int:
        return self.base[idx] if reply.degraded or reply.exit_cut < 0 else self.labels[idx]

    def record(self, started: float, reply=None, error: Exception | None = None, i: int = 0) -> None:
        idx = i % len(self.labels)
        if time.perf_counter() - started > self.max_s:
            self.hung += 1
        if error is not None:
            self.events.append((time.monotonic(), type(error).__name__))
        elif reply.label != self.expected(reply, idx):
            self.wrong += 1
        super().record(started, reply, error, i)


def references(bundle_path: str, pixels: np.ndarray) -> tuple[list[int], list[int]]:
    """The engine's labels and the full model's, per image."""
    bundle = load_bundle(bundle_path)
    engine = Engine(bundle)
    x = bundle.preprocess(pixels)
    labels = [engine.predict(x[i:i + 1]).label for i in range(len(x))]
    base = [engine.predict_base(x[i:i + 1]) for i in range(len(x))]
    engine.close()
    return labels, base


# ---- attacks ------------------------------------------------------------------------------------

def thrift_message(method: str, *args) -> bytes:
    buf = TTransport.TMemoryBuffer()
    getattr(Aggregator.Client(protocol(buf, 1 << 30)), f"send_{method}")(*args)
    return buf.getvalue()


def forge(address: tuple[str, int], request_id: int) -> None:
    """A forged `finished` and `shadowed` for a plausible id, each on a connection of its own."""
    for message in (thrift_message("finished", ExecutionResult(request_id=request_id, label=1, confidence=1.0,
                                                               exit_cut=0, stages_run=1)),
                    thrift_message("shadowed", ShadowResult(request_id=request_id, base_label=1, samples=[]))):
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(len(message).to_bytes(4, "big") + message)
            s.settimeout(2)
            try:
                s.recv(1)
            except OSError:
                pass


def oversized(address: tuple[str, int], size: int = 16 * 1024 * 1024) -> int:
    """Declare a 16 MB predict frame and stream zeros until the server cuts the connection; bytes sent."""
    head = thrift_message("predict", Request(image=b"\0" * 1024))[:64]
    sent = 0
    with socket.create_connection(address, timeout=5) as s:
        try:
            s.sendall(size.to_bytes(4, "big") + head)
            chunk = bytes(64 * 1024)
            while sent < size:
                sent += s.send(chunk)
        except OSError:
            pass
    return sent


def idle_flood(address: tuple[str, int], n: int, hold_s: float) -> int:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(address)
            socks.append(s)
        time.sleep(hold_s)
    finally:
        for s in socks:
            s.close()
    return len(socks)


@dataclass
class Attacks:
    forged: int = 0
    oversized: int = 0
    oversized_cut_off: int = 0
    idle_connections: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def run(self, address: tuple[str, int], stop: threading.Event, flood: int) -> None:
        rounds = 0
        while not stop.wait(1.0):
            rounds += 1
            try:
                for k in range(4):
                    forge(address, int.from_bytes(os.urandom(8), "big") >> 1)
                    self.forged += 2
                sent = oversized(address)
                self.oversized += 1
                self.oversized_cut_off += sent < 16 * 1024 * 1024
                if rounds % 10 == 0:
                    self.idle_connections += idle_flood(address, flood, 2.0)
            except OSError as e:  # the aggregator itself may be down (it is killed in turn too)
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1


# ---- the run ------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def current(cfg: ClusterConfig) -> dict[str, launch.Proc]:
    return {p.name: p for p in launch.read_pidfile(Path(cfg.log_dir) / launch.PIDFILE)}


def wait_back(cfg: ClusterConfig, name: str, old_pid: int, timeout_s: float) -> float | None:
    """When the restarted `name` answers ping (time.monotonic()), or None."""
    secret = Secret.load(cfg.secret_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = current(cfg).get(name)
        if p is not None and p.pid != old_pid and p.answers(secret):
            return time.monotonic()
        time.sleep(0.1)
    return None


def kill_in_turn(cfg: ClusterConfig, period_s: float, began: float, stop: threading.Event, kills: list[Kill]) -> None:
    """Every `period_s`, SIGKILL the next service of ROTATION and wait until the supervisor's restart answers."""
    turn = 0
    while not stop.wait(period_s):
        victim = ROTATION[turn % len(ROTATION)]
        turn += 1
        old = current(cfg)[victim].pid
        os.killpg(old, signal.SIGKILL)
        kill = Kill(victim, time.monotonic() - began)
        kills.append(kill)
        back = wait_back(cfg, victim, old, timeout_s=120)
        kill.back_at = None if back is None else back - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--period", type=float, default=30.0, help="seconds between kills")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--flood", type=int, default=500, help="idle connections per flood")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--max-sample-mb", type=float, default=None,
                   help="the retrainer's sample memory (default: its own, 256); a small one fills its rings early in "
                        "the run, so that the rest of it shows whether memory stays flat once they are full")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args()

    split = load_split("cifar10", a.data_dir, "test:eval")
    pixels = split.images[:a.images]
    labels, base = references(a.bundle, pixels)
    with tempfile.TemporaryDirectory() as tmp:
        # Refits off: every answer is checked against the bundle's own cascade, which a deployed refit would change.
        retrainer = {"refit_every": 0, "refit_seconds": 0,
                     **({"max_sample_mb": a.max_sample_mb} if a.max_sample_mb is not None else {})}
        config = write_config(Path(tmp), a.bundle, executors=2,
                              aggregator={"sample_rate": 0.05, "workers": 8, "queue_size": 64},
                              executor={"workers": 2}, retrainer_options=retrainer,
                              timeouts_ms={"request": 5000, "max_request": 5000})
        cfg = load_config(config)
        supervisor, _ = launch.start_supervised(cfg, 300)
        try:
            report = run(a, cfg, pixels, labels, base)
        finally:
            launch.stop(cfg)
        report["supervisor_log_tail"] = (Path(cfg.log_dir) / "supervisor.log").read_text().splitlines()[-20:]
    report["environment"] = environment()
    text = json.dumps(report)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


def held_samples(cfg: ClusterConfig) -> dict[str, float] | None:
    """The retrainer's samples held per cut (its rings are full when these stop growing); None while it is down."""
    try:
        gauges = status(cfg.retrainer.host, cfg.retrainer.port, secret=Secret.load(cfg.secret_file)).gauges
    except (PeerUnavailable, TTransport.TTransportException, OSError):
        return None
    prefix = "retrainer_samples_held."
    return {k[len(prefix):]: v for k, v in gauges.items() if k.startswith(prefix)}


def run(a: argparse.Namespace, cfg: ClusterConfig, pixels: np.ndarray, labels: list[int], base: list[int]) -> dict:
    address = (cfg.aggregator.host, cfg.aggregator.port)
    outcomes = Checked(labels, base, cfg.timeouts.max_request_ms / 1000 + 1.0)
    stop = threading.Event()

    def send(client: GatiClient, i: int):
        try:
            return client.predict_pixels(pixels[i % len(pixels)])
        except PeerUnavailable:  # the aggregator is down: a client backs off before it tries again
            time.sleep(0.1)
            raise

    seconds = a.minutes * 60
    load = threading.Thread(target=closed_loop, args=(send, lambda: GatiClient(*address, timeout_s=30), a.clients,
                                                      seconds, outcomes, stop))
    attacks = Attacks()
    attacker = threading.Thread(target=attacks.run, args=(address, stop, a.flood))
    rss: list[dict] = []
    kills: list[Kill] = []
    began = time.monotonic()
    monkey = threading.Thread(target=kill_in_turn, args=(cfg, a.period, began, stop, kills))
    load.start()
    attacker.start()
    monkey.start()
    while time.monotonic() - began < seconds:
        rss.append({"t_s": round(time.monotonic() - began, 1),
                    **{name: rss_mb(proc.pid) for name, proc in current(cfg).items()},
                    "retrainer_held": held_samples(cfg)})
        time.sleep(min(a.sample_every, max(0.0, seconds - (time.monotonic() - began))))
    stop.set()
    for t in (monkey, load, attacker):
        t.join(timeout=180)

    for k in kills:  # failures while each victim was down, and the second after it came back
        end = (k.back_at if k.back_at is not None else seconds) + 1.0
        for t, kind in outcomes.events:
            if k.killed_at <= t - began <= end:
                k.failures[kind] = k.failures.get(kind, 0) + 1
    with GatiClient(*address, timeout_s=10) as client:  # after everything, it still answers right
        final = [(r := client.predict_pixels(pixels[i])).label == outcomes.expected(r, i) for i in range(20)]
    door = status(*address, timeout_s=10)  # the live bound over every answer, and whether it fell back
    live = {k: v for k, v in {**door.counters, **door.gauges}.items() if k.startswith("live_")}
    summary = outcomes.summary()
    lost = summary["failures"].get(PeerUnavailable.__name__, 0)
    return {
        "minutes": a.minutes, "period_s": a.period, "clients": a.clients,
        "outcomes": {**summary, "wrong_answers": outcomes.wrong, "lost": lost,
                     "hung": outcomes.hung + summary["failures"].get("hung_clients", 0) + load.is_alive()},
        "answers_right_after_the_run": sum(final), "live": live, "kills": [vars(k) for k in kills],
        "attacks": vars(attacks), "restarts": {n: p.restarts for n, p in current(cfg).items()},
        "rss_mb": rss,
    }


if __name__ == "__main__":
    main()
