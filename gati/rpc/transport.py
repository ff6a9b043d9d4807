"""Client side of every hop: framed binary Thrift over persistent TCP connections, with limits.

- One in-flight call per connection; a `Pool` per peer keeps a few open so the hot path never
  connects (a connect costs more than a whole message on loopback).
- Every socket has a connect timeout and a call timeout; frames and strings are capped at the
  configured message size on both ends.
- Calls between services are authenticated: with `Limits.secret` set, a connection opens with the
  handshake of gati/rpc/auth.py and every frame carries its tag (`SignedFramedTransport`). Only
  clients of the aggregator's public port (`gati predict`, GatiClient) connect without one.
- A pooled connection idle for `Limits.idle_s` is closed rather than reused: the server closes
  idle connections too (later), and a request sent into a connection it just closed is lost.
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
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from thrift.protocol import TBinaryProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TException
from thrift.transport import TSocket, TTransport

from gati.errors import GatiError
from gati.rpc import auth

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
    secret: auth.Secret | None = None   # None: the aggregator's public port only
    idle_s: float = 30.0                # pooled connections idle longer are not reused

    @classmethod
    def from_config(cls, cfg: Any) -> "Limits":
        """Between the services of a cluster: authenticated with the deployment's secret."""
        t = cfg.timeouts
        return cls(t.connect_ms / 1000, t.call_ms / 1000, cfg.max_message_bytes, cfg.hop_delay_ms / 1000,
                   auth.Secret.load(cfg.secret_file), cfg.connections.client_idle_s)


def protocol(trans: TTransport.TTransportBase, max_bytes: int) -> TBinaryProtocol.TBinaryProtocol:
    return _PROTOCOL(trans, string_length_limit=max_bytes, container_length_limit=max_bytes)


def framed(sock: TSocket.TSocket, max_bytes: int) -> TTransport.TFramedTransport:
    return TTransport.TFramedTransport(sock, max_frame_size=min(max_bytes, TTransport.HARD_MAX_FRAME_SIZE))


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SignedFramedTransport(TTransport.TTransportBase, TTransport.CReadableTransport):
    """Thrift's framed transport inside an authenticated session (gati/rpc/auth.py): `open`
    connects, then runs the handshake within `handshake_s`; every frame sent ends with its tag,
    every frame received is checked."""

    def __init__(self, sock: TSocket.TSocket, max_bytes: int, secret: auth.Secret, handshake_s: float):
        self._sock, self._max, self._secret, self._handshake_s = sock, max_bytes, secret, handshake_s
        self._session: auth.Session | None = None
        self._rbuf = BytesIO(b"")
        self._wbuf = BytesIO()

    def isOpen(self) -> bool:
        return self._sock.isOpen()

    def open(self) -> None:
        self._sock.open()
        self._sock.setTimeout(self._handshake_s * 1000)
        sent = auth.hello()
        self._sock.write(sent.data)
        self._sock.flush()
        proof, self._session = auth.prove(self._secret, sent, self._sock.readAll(auth.CHALLENGE_SIZE))
        self._sock.write(proof)
        self._sock.flush()

    def close(self) -> None:
        self._sock.close()

    def read(self, sz: int) -> bytes:
        ret = self._rbuf.read(sz)
        if ret:
            return ret
        self._read_frame()
        return self._rbuf.read(sz)

    def _read_frame(self) -> None:
        size = int.from_bytes(self._sock.readAll(4), "big", signed=True)
        if not auth.TAG <= size <= self._max + auth.TAG:
            raise TTransport.TTransportException(TTransport.TTransportException.SIZE_LIMIT,
                                                 f"a frame of {size} bytes (limit {self._max})")
        data = self._sock.readAll(size)
        message, tag = data[:-auth.TAG], data[-auth.TAG:]
        if not self._session.check(message, tag):
            raise TTransport.TTransportException(TTransport.TTransportException.UNKNOWN,
                                                 "a reply whose tag does not verify")
        self._rbuf = BytesIO(message)

    def write(self, buf: bytes) -> None:
        self._wbuf.write(buf)

    def flush(self) -> None:
        message, self._wbuf = self._wbuf.getvalue(), BytesIO()
        tag = self._session.seal(message)
        self._sock.write((len(message) + auth.TAG).to_bytes(4, "big") + message + tag)
        self._sock.flush()

    # Thrift's C codec (fastbinary) reads through these two.
    @property
    def cstringio_buf(self) -> BytesIO:
        return self._rbuf

    def cstringio_refill(self, prefix: bytes, reqlen: int) -> BytesIO:
        while len(prefix) < reqlen:
            self._read_frame()
            prefix += self._rbuf.getvalue()
        self._rbuf = BytesIO(prefix)
        return self._rbuf


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
    """One open connection to one peer, with its generated client. Connecting is bounded by
    `connect_s`; the handshake, the first exchange of the call that opened it, by `first_call_s`
    (default: `call_s`), so a peer that accepts but hangs costs that call its timeout, as it
    would on a connection already open."""

    def __init__(self, client_cls: type, host: str, port: int, limits: Limits, first_call_s: float | None = None):
        self.socket = TSocket.TSocket(host, port)
        self.socket.setTimeout(limits.connect_s * 1000)
        self.transport = framed(self.socket, limits.max_bytes) if limits.secret is None else \
            SignedFramedTransport(self.socket, limits.max_bytes, limits.secret,
                                  limits.call_s if first_call_s is None else first_call_s)
        try:
            self.transport.open()
        except auth.AuthError as e:
            self.socket.close()
            raise PeerUnavailable(f"cannot authenticate with {host}:{port}: {e}") from e
        except (TTransport.TTransportException, OSError) as e:
            self.socket.close()
            raise PeerUnavailable(f"cannot connect to {host}:{port}: {e}") from e
        tune(self.socket.handle)
        self.socket.setTimeout(limits.call_s * 1000)
        self.client = client_cls(protocol(self.transport, limits.max_bytes))
        self.call_s = limits.call_s
        self.idle_s = limits.idle_s
        self.last_used = time.monotonic()

    def alive(self) -> bool:
        """False once the peer closed its end (a restarted peer leaves such connections behind),
        or once it sat idle so long that the server may be closing it."""
        return time.monotonic() - self.last_used < self.idle_s and self.socket.isOpen()

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
        """A two-way call; declared Thrift exceptions pass through, transport failures raise PeerUnavailable.
        `timeout_s` bounds the whole call, opening a connection (and its handshake) included."""
        conn = self._checkout(timeout_s)
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

    def _checkout(self, timeout_s: float | None = None) -> Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                limits = self.limits if timeout_s is None else \
                    replace(self.limits, connect_s=max(min(self.limits.connect_s, timeout_s), 0.001))
                return Connection(self.client_cls, self.host, self.port, limits, timeout_s)
            # An idle connection has nothing to read unless its peer closed it (restarted, or
            # dropped it): oneway connections would not notice otherwise until a later send.
            if conn.alive():
                return conn
            conn.close()

    def _checkin(self, conn: Connection) -> None:
        conn.last_used = time.monotonic()
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def _delay(self) -> None:
        if self.limits.hop_delay_s:
            time.sleep(self.limits.hop_delay_s)
