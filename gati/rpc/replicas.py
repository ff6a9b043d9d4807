"""The executor replicas behind an aggregator: which one takes a request, and which are alive.

**Routing.** A request goes to the replica with the fewest requests in flight (the aggregator's
own count: requests sent to it and not yet answered), among the replicas believed up; ties go
round-robin. A replica that refuses or fails a request is not tried again for it.

**Liveness.** One watcher thread per replica holds an authenticated connection to it and pings on
it every `heartbeat_s`; between pings it waits for the connection to become readable, which an
idle connection only does when the peer closed it. A process that dies (a crash, SIGKILL, the OOM
killer) has its connections closed by the kernel, so the watcher learns of it within
milliseconds, not at a deadline. It then reconnects to find out what happened:

- the port refuses the connection: the process is gone, and the requests in flight on it are
  lost (`on_lost`: the aggregator moves them to another replica or fails them at once);
- a process answers that is not the one watched before (another pid or start time): it was
  restarted in between, and the requests in flight on the old one are lost just the same;
- the same process answers: the connection dropped for another reason; nothing is lost;
- no answer in time (a frozen or unreachable host): the replica is down for routing, its
  requests wait for their deadlines (capped by `timeouts_ms.max_request`), and the watcher
  keeps trying.
"""
from __future__ import annotations

import itertools
import logging
import select
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from thrift.Thrift import TException

from gati.rpc.gen.gati_idl import Executor
from gati.rpc.transport import Connection, Limits, PeerUnavailable, Pool

log = logging.getLogger("gati.rpc.replicas")

RETRY_S = 0.2          # between attempts to reach a replica that is down
LOST_GRACE_S = 0.05    # answers the dead process sent just before dying still arrive within this


@dataclass(frozen=True)
class Identity:
    """Which process serves a replica's port: a restarted one differs in pid or start time."""
    pid: int
    started: float     # wall-clock seconds, as the process reports its uptime

    def same(self, other: "Identity") -> bool:
        return self.pid == other.pid and abs(self.started - other.started) < 1.0


@dataclass
class Replica:
    name: str
    pool: Pool
    in_flight: int = 0
    up: bool = True    # believed up until its watcher finds otherwise (it connects at start)


class Replicas:
    def __init__(self, replicas: list[Replica], limits: Limits, on_lost: Callable[[str], None],
                 on_state: Callable[[str, bool], None] = lambda name, up: None, heartbeat_s: float = 1.0):
        if not replicas:
            raise ValueError("an aggregator needs at least one executor replica")
        self.replicas, self.limits, self.on_lost, self.on_state = replicas, limits, on_lost, on_state
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._closed = threading.Event()
        self._watchers = [threading.Thread(target=self._watch, args=(r,), name=f"watch-{r.name}", daemon=True)
                          for r in replicas]

    def start(self) -> "Replicas":
        for t in self._watchers:
            t.start()
        return self

    def close(self) -> None:
        self._closed.set()
        for t in self._watchers:
            t.join(timeout=self.limits.call_s + 1)
        for r in self.replicas:
            r.pool.close()

    # ---- routing --------------------------------------------------------------------------

    def pick(self, exclude: set[str]) -> Replica | None:
        """The least loaded replica not in `exclude`, preferring those believed up; None when none is left."""
        with self._lock:
            left = [r for r in self.replicas if r.name not in exclude]
            pool = [r for r in left if r.up] or left  # all down: one attempt tells the truth quickly
            if not pool:
                return None
            least = min(r.in_flight for r in pool)
            ties = [r for r in pool if r.in_flight == least]
            return ties[next(self._turn) % len(ties)]

    @contextmanager
    def busy(self, replica: Replica) -> Iterator[None]:
        """Count a request in flight on `replica` for the body."""
        with self._lock:
            replica.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                replica.in_flight -= 1

    def suspect(self, replica: Replica) -> None:
        """A call to it failed: route elsewhere until its watcher reaches it again."""
        self._set(replica, False)

    # ---- liveness -------------------------------------------------------------------------

    def _watch(self, r: Replica) -> None:
        known: Identity | None = None  # the process watched last
        while not self._closed.is_set():
            try:
                conn = Connection(Executor.Client, r.pool.host, r.pool.port, self.limits)
            except PeerUnavailable:
                self._set(r, False)
                if known is not None and refused(r.pool.host, r.pool.port, self.limits.connect_s):
                    self._lose(r, "its port refuses connections: the process is gone")
                    known = None
                self._closed.wait(RETRY_S)
                continue
            try:
                now = identity(conn)
                if known is not None and not now.same(known):
                    self._lose(r, f"it was restarted (pid {known.pid} -> {now.pid})")
                known = now
                closed = self._hold(r, conn)
            except (PeerUnavailable, TException, OSError, EOFError):
                closed = False  # no answer in time: down for routing, and reconnect to learn more
            finally:
                conn.close()
            self._set(r, False)
            if not closed:
                self._closed.wait(RETRY_S)

    def _hold(self, r: Replica, conn: Connection) -> bool:
        """Up while it answers pings (a failed call may have marked it down meanwhile: `suspect`), until
        the connection breaks: True when the peer closed it, False when it stopped taking work."""
        sock = conn.socket.handle
        while not self._closed.is_set():
            if not conn.client.ping():
                return False  # draining
            self._set(r, True)
            readable, _, _ = select.select([sock], [], [], self.heartbeat_s)
            if readable:  # an idle connection has nothing to read unless the peer closed it
                return True
        return False

    def _lose(self, r: Replica, why: str) -> None:
        log.warning("executor %s: %s; its requests in flight are moved or failed", r.name, why)
        self._closed.wait(LOST_GRACE_S)
        self.on_lost(r.name)

    def _set(self, r: Replica, up: bool) -> None:
        with self._lock:
            changed, r.up = r.up != up, up
        if changed:
            log.info("executor %s is %s", r.name, "up" if up else "down")
        self.on_state(r.name, up)


def identity(conn: Connection) -> Identity:
    s = conn.client.status()
    return Identity(s.pid, time.time() - s.uptime_s)


def refused(host: str, port: int, timeout_s: float) -> bool:
    """Nothing listens at host:port (the connection is refused), as opposed to no answer in time."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False
