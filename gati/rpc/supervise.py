"""Keeps a local cluster running: what systemd's `Restart=on-failure` does for the AWS units.

`make deploy-local` (gati/rpc/launch.py `start_supervised`) leaves this process behind:

    python -m gati.rpc.supervise --config deploy/local.yaml

It starts every configured service (`launch.spawn`), and when one fails (a crash, SIGKILL, the
OOM killer: any exit but a clean one, as systemd's `on-failure`) starts it again after a backoff
that doubles with each failure in a row (0.5 s, 1 s, 2 s, ... at most 30 s) and starts over once
the service stayed up for 60 s, so a service that cannot start does not spin. Every exit and restart is logged
(`<log_dir>/supervisor.log`), and the pid file (`<log_dir>/cluster.json`) always names the
current pids and each service's restart count (`make status-local` shows them). SIGTERM (`make
stop-local`) stops the services as `launch.stop_procs` does (SIGTERM: they drain; SIGKILL after a
grace) and then the supervisor. A restarted service rejoins by itself: its peers reconnect, and
the aggregator moves or fails the requests a dead executor held (gati/rpc/replicas.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gati.rpc import launch
from gati.rpc.config import ClusterConfig, load_config

log = logging.getLogger("gati.rpc.supervise")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0        # up this long: the next exit starts the backoff over
POLL_S = 0.1
UNKNOWN_FAILURE = 1 << 8   # a wait status meaning "exit code 1"


@dataclass
class Watched:
    proc: launch.Proc
    started: float
    exits_in_a_row: int = 0
    restart_at: float | None = None   # set while it waits out its backoff

    def backoff_s(self) -> float:
        return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, self.exits_in_a_row - 1))


class Supervisor:
    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self.pidfile = Path(cfg.log_dir) / launch.PIDFILE
        self.stopping = threading.Event()
        self.watched: dict[str, Watched] = {}

    def run(self) -> None:
        for name, role in launch.roles(self.cfg):
            self.watched[name] = Watched(launch.spawn(self.cfg, name, role), time.monotonic())
        self._record()
        log.info("supervising %d services (pid file %s)", len(self.watched), self.pidfile)
        while not self.stopping.wait(POLL_S):
            for w in self.watched.values():
                self._check(w)
        log.info("stopping the services")
        launch.stop_procs([w.proc for w in self.watched.values()])

    def _check(self, w: Watched) -> None:
        now = time.monotonic()
        if w.restart_at is None:
            code = exit_code(w.proc.pid)
            if code is None:
                if now - w.started >= STABLE_S:
                    w.exits_in_a_row = 0
                return
            if code == 0:  # it was asked to stop (SIGTERM drains, then exits 0): as systemd's on-failure
                log.info("%s (pid %d) exited cleanly; not restarting it", w.proc.name, w.proc.pid)
                w.restart_at = float("inf")
                return
            w.exits_in_a_row += 1
            w.restart_at = now + w.backoff_s()
            log.warning("%s (pid %d) exited (%s); restarting it in %.1f s", w.proc.name, w.proc.pid,
                        describe(code), w.backoff_s())
        elif now >= w.restart_at:
            restarts = w.proc.restarts + 1
            w.proc = launch.spawn(self.cfg, w.proc.name, w.proc.role)
            w.proc.restarts = restarts
            w.started, w.restart_at = now, None
            log.warning("%s restarted (pid %d, restart %d)", w.proc.name, w.proc.pid, restarts)
            self._record()

    def _record(self) -> None:
        launch.write_pidfile(self.pidfile, [w.proc for w in self.watched.values()], supervisor=os.getpid())


def exit_code(pid: int) -> int | None:
    """The child's wait status once it exited (reaped here), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere: its status is unknown, so count it as a failure
        return None if launch.alive(pid) else UNKNOWN_FAILURE
    return status if done else None


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="restart crashed services of a local GATI cluster")
    p.add_argument("--config", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    supervisor = Supervisor(load_config(a.config))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
