"""Client side of every hop: framed binary Thrift over persistent TCP connections, with limits.

- One in-flight call per connection; a `Pool` per peer keeps a few open so the hot path never
  connects (a connect costs more than a whole message on loopback).
- Every socket has a connect timeout and a call timeout; frames and strings are capped at the
  configured message size on both ends.
- TCP_NODELAY: a request is one small frame and must not wait for Nagle's algorithm.
- `hop_delay_s` sleeps before every message sent (and again before a reply is read), so a single
  host can imitate the latency of placing services on different machines.
- Any transport failure closes the connection and surfaces as `PeerUnavailable`; callers decide
  what a dead peer means (a predictor: a miss; the executor: a typed error to the client).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from thrift.protocol import TBinaryProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TException
from thrift.transport import TSocket, TTransport

from gati.errors import GatiError

try:  # the C extension halves (de)serialisation time; fall back to pure Python without it
    from thrift.protocol import fastbinary  # noqa: F401
    _PROTOCOL = TBinaryProtocol.TBinaryProtocolAccelerated
except ImportError:  # pragma: no cover - depends on how thrift was installed
    _PROTOCOL = TBinaryProtocol.TBinaryProtocol


# TSocket logs every failed connect at ERROR; a refused connect is an expected event here (a
# predictor down is a miss), reported once by the caller as PeerUnavailable.
logging.getLogger("thrift.transport.TSocket").setLevel(logging.CRITICAL)


WARN_EVERY_S = 10

# Failures after which a connection's stream position is unknown: it must be closed.
_BROKEN = (TTransport.TTransportException, TProtocolException, TApplicationException, OSError, EOFError)


class PeerUnavailable(GatiError):
    """A peer could not be reached, or a call to it failed at the transport level."""


@dataclass(frozen=True)
class Limits:
    connect_s: float = 1.0
    call_s: float = 2.0
    max_bytes: int = 64 * 1024 * 1024
    hop_delay_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> "Limits":
        t = cfg.timeouts
        return cls(t.connect_ms / 1000, t.call_ms / 1000, cfg.max_message_bytes, cfg.hop_delay_ms / 1000)


def protocol(trans: TTransport.TTransportBase, max_bytes: int) -> TBinaryProtocol.TBinaryProtocol:
    return _PROTOCOL(trans, string_length_limit=max_bytes, container_length_limit=max_bytes)


def framed(sock: TSocket.TSocket, max_bytes: int) -> TTransport.TFramedTransport:
    return TTransport.TFramedTransport(sock, max_frame_size=min(max_bytes, TTransport.HARD_MAX_FRAME_SIZE))


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Throttle:
    """allow() is true at most once every `every_s` seconds: for logging failures that repeat per request."""

    def __init__(self, every_s: float = WARN_EVERY_S):
        self.every_s = every_s
        self._last = -every_s

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True


class Connection:
    """One open connection to one peer, with its generated client."""

    def __init__(self, client_cls: type, host: str, port: int, limits: Limits):
        self.socket = TSocket.TSocket(host, port)
        self.socket.setTimeout(limits.connect_s * 1000)
        self.transport = framed(self.socket, limits.max_bytes)
        try:
            self.transport.open()
        except TTransport.TTransportException as e:
            raise PeerUnavailable(f"cannot connect to {host}:{port}: {e}") from e
        tune(self.socket.handle)
        self.socket.setTimeout(limits.call_s * 1000)
        self.client = client_cls(protocol(self.transport, limits.max_bytes))
        self.call_s = limits.call_s

    def alive(self) -> bool:
        """False once the peer closed its end (a restarted peer leaves such connections behind)."""
        return self.socket.isOpen()

    def set_timeout(self, seconds: float) -> None:
        self.socket.setTimeout(seconds * 1000)

    def close(self) -> None:
        self.transport.close()


class Call:
    """A two-way call whose request is sent; `result` reads the reply (once)."""

    def __init__(self, pool: "Pool", conn: Connection, method: str):
        self.pool, self.conn, self.method = pool, conn, method

    def result(self, timeout_s: float) -> Any:
        """The reply within `timeout_s`, else PeerUnavailable (and the connection is dropped:
        a late reply would arrive out of step)."""
        conn, self.conn = self.conn, None
        if conn is None:
            raise PeerUnavailable(f"the reply to {self.method} on {self.pool.name} was already read")
        conn.set_timeout(max(timeout_s, 0.0005))
        try:
            result = getattr(conn.client, f"recv_{self.method}")()
        except _BROKEN as e:
            conn.close()
            raise PeerUnavailable(f"{self.method} on {self.pool.name} failed: {e}") from e
        self.pool._delay()
        self.pool._reset(conn, timeout_s)
        return result


class Pool:
    """Connections to one peer, reused; at most `size` kept idle, more opened under load."""

    def __init__(self, client_cls: type, host: str, port: int, limits: Limits, size: int = 4, name: str = ""):
        self.client_cls, self.host, self.port, self.limits, self.size = client_cls, host, port, limits, size
        self.name = name or f"{host}:{port}"
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._warnings = Throttle()

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """A two-way call; declared Thrift exceptions pass through, transport failures raise PeerUnavailable."""
        conn = self._checkout()
        if timeout_s is not None:
            conn.set_timeout(timeout_s)
        try:
            self._delay()
            result = getattr(conn.client, method)(*args)
            self._delay()
        except _BROKEN as e:
            conn.close()
            raise PeerUnavailable(f"{method} on {self.name} failed: {e}") from e
        except TException:  # a declared exception arrived whole: the connection is still in step
            self._reset(conn, timeout_s)
            raise
        except BaseException:
            conn.close()
            raise
        self._reset(conn, timeout_s)
        return result

    def _reset(self, conn: Connection, timeout_s: float | None) -> None:
        if timeout_s is not None:
            conn.set_timeout(conn.call_s)
        self._checkin(conn)

    def start(self, method: str, *args: Any) -> "Call":
        """Send a two-way call's request now and read its reply later (`Call.result`); the
        connection stays with the call until then."""
        self._delay()
        for attempt in (0, 1):  # nothing was processed if the send itself failed: one retry is safe
            conn = self._checkout()
            try:
                getattr(conn.client, f"send_{method}")(*args)
            except _BROKEN as e:
                conn.close()
                if attempt:
                    raise PeerUnavailable(f"{method} to {self.name} failed: {e}") from e
                continue
            return Call(self, conn, method)
        raise AssertionError("unreachable")

    def send(self, method: str, *args: Any) -> None:
        """A oneway message. A connection the peer closed is replaced once before giving up."""
        self._delay()
        for attempt in (0, 1):
            conn = self._checkout()
            try:
                getattr(conn.client, method)(*args)
            except _BROKEN as e:
                conn.close()
                if attempt:
                    raise PeerUnavailable(f"{method} to {self.name} failed: {e}") from e
                continue
            self._checkin(conn)
            return

    def warn(self, log: logging.Logger, error: Exception) -> None:
        """Log a failure to reach this peer at most every WARN_EVERY_S (a down peer fails every request)."""
        if self._warnings.allow():
            log.warning("%s (failures to reach %s are logged once per %d s)", error, self.name, WARN_EVERY_S)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _checkout(self) -> Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Connection(self.client_cls, self.host, self.port, self.limits)
            # An idle connection has nothing to read unless its peer closed it (restarted, or
            # dropped it): oneway connections would not notice otherwise until a later send.
            if conn.alive():
                return conn
            conn.close()

    def _checkin(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def _delay(self) -> None:
        if self.limits.hop_delay_s:
            time.sleep(self.limits.hop_delay_s)
