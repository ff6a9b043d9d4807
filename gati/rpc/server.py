"""Server side: per listening port, a bounded pool of threads shares one poller (leader/followers).

Why this shape: peers keep persistent connections that are idle most of the time, and anyone who
reaches the public port can open thousands. One thread per connection makes each cost a thread,
and select() cannot watch descriptors above 1024. Here the OS's poller (epoll on Linux) watches
every connection and frames are read without blocking: a connection costs a descriptor and a small
object until it sends a frame, and only complete frames are processed. One thread at a time, the
leader, waits in the poller and reads; when it has read a complete frame it hands the poller to
another thread and processes the frame itself, and once the reply is written it re-arms the
connection itself: no thread switch lies between a frame's arrival and its handler. A connection
has at most one frame being processed (its next frame is read once the reply is written), so its
calls are answered in order. Connections' state is guarded by one short lock (`_state`).

Bounds, per port (`connections:` in the cluster config, `ConnectionLimits`):
- at most `max_open` connections (and fewer than the process's descriptor limit): at the cap the
  longest-idle connection is closed to admit a new one; a connection that is sending or being
  answered is never closed for this. With none idle, the new connection is closed.
- a connection silent for `idle_s` is closed; a frame (or the handshake) must arrive whole
  within `read_s` of its first byte.
- a frame's size and method name are read first: a method the port does not serve, or a frame
  larger than that method's limit (gati/rpc/surface.py), closes the connection unread.
- frames held at once (being read, queued or processed) total at most `buffer_mb` (a single
  frame is always admitted); a frame that does not fit waits, within `read_s`, for room.
- `workers` threads: calls processed at once (while all are busy, nothing more is read).
- out of descriptors (EMFILE), accepting pauses for a moment, the longest-idle connections are
  closed, and accepting resumes; the event is logged (at most once per 10 s) and counted.
On an authenticated port a connection completes the handshake (gati/rpc/auth.py) before any
frame is read, and a frame whose tag does not verify closes the connection unprocessed.
Refusals are counted in the service's metrics, `gati_rpc_connection_events_total{port, event}`.

Stopping, with the handler's Gate (see roles.Service.drain):
    gate.close()   new calls are refused with a typed error; oneway traffic keeps flowing
    wait idle      calls in flight finish (bounded by a timeout)
    close()        the listener and every connection are shut down
"""
from __future__ import annotations

import errno
import logging
import resource
import selectors
import signal
import socket
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from io import BytesIO
from typing import Any, Callable, Iterator

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.transport import TTransport

from gati.rpc import auth
from gati.rpc.config import ConnectionLimits
from gati.rpc.metrics import ConnectionEvents
from gati.rpc.surface import Surface
from gati.rpc.transport import Throttle, protocol, tune

log = logging.getLogger("gati.rpc.server")

TICK_S = 0.2                 # how often deadlines are checked
CHUNK = 64 * 1024            # bytes asked of the socket at once, before a frame's size is known
MAX_NAME = 64                # longest method name accepted in a frame's header
ACCEPT_BATCH = 64            # connections accepted per wake-up
ACCEPT_BACKOFF_S = 0.1       # pause after the process ran out of descriptors
FD_RESERVE = 64              # descriptors left for everything but client connections
EVICT_ON_EMFILE = 8          # idle connections closed when the process runs out of descriptors
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Gate:
    """Counts calls in flight; once closed, `enter` raises what `refuse()` returns."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inflight = 0
        self.closed = False

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextmanager
    def enter(self, refuse: Callable[[], Exception]) -> Iterator[None]:
        with self._cond:
            if self.closed:
                raise refuse()
            self._inflight += 1
        with self._counted():
            yield

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the body in flight without refusing it (messages the cluster still needs while draining)."""
        with self._cond:
            self._inflight += 1
        with self._counted():
            yield

    @contextmanager
    def _counted(self) -> Iterator[None]:
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0:
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout=timeout_s)


_after_reply = threading.local()


def after_reply(action: Callable[[], None]) -> None:
    """Run `action` once the reply to the call being handled is written (at once outside a server
    worker): work the caller does not wait for, kept off its critical path."""
    pending = getattr(_after_reply, "actions", None)
    if pending is None:
        action()
    else:
        pending.append(action)


def method_name(buf: bytearray, start: int, end: int) -> str | None:
    """The method name of the Thrift binary message starting at buf[start] (bytes up to `end` are
    in); None until enough bytes are in. ValueError when it is not a Thrift message header."""
    if end - start < 8:
        return None
    first = int.from_bytes(buf[start:start + 4], "big", signed=True)
    if first < 0:  # strict: version and message type, then the name's length
        if first & TBinaryProtocol.VERSION_MASK != TBinaryProtocol.VERSION_1:
            raise ValueError(f"bad protocol version {first & TBinaryProtocol.VERSION_MASK:#x}")
        length, at = int.from_bytes(buf[start + 4:start + 8], "big", signed=True), start + 8
    else:          # old style: the name's length first
        length, at = first, start + 4
    if not 0 < length <= MAX_NAME:
        raise ValueError(f"a method name of {length} bytes")
    if end - at < length:
        return None
    return bytes(buf[at:at + length]).decode("ascii")


def descriptor_limit() -> int:
    """This process's limit on open descriptors, the soft limit first raised to the hard one (as
    Go's runtime does): systemd's default soft limit, 1024, is what a few hundred clients exhaust."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Messages(TTransport.TTransportBase, TTransport.CReadableTransport):
    """One connection's message in and reply out, in memory: it and the protocol over it are made
    once per connection (making them per call cost more than the rest of a small call's work)."""

    def __init__(self, limit: int):
        self._in, self._out = BytesIO(), BytesIO()
        self.protocol = protocol(self, limit)

    def load(self, message: bytes, limit: int) -> None:
        self._in, self._out = BytesIO(message), BytesIO()
        self.protocol.string_length_limit = self.protocol.container_length_limit = limit

    def reply(self) -> bytes:
        return self._out.getvalue()

    def isOpen(self) -> bool:
        return True

    def read(self, sz: int) -> bytes:
        return self._in.read(sz)

    def write(self, buf: bytes) -> None:
        self._out.write(buf)

    @property
    def cstringio_buf(self) -> BytesIO:  # Thrift's C codec reads through these two
        return self._in

    def cstringio_refill(self, partial: bytes, reqlen: int) -> BytesIO:
        raise EOFError("a message ends inside its frame")


class _Conn:
    """One client connection. The leader owns it, except while a thread processes its frame (`busy`)."""

    def __init__(self, sock: socket.socket, peer: str, handshake: bool):
        self.sock, self.peer = sock, peer
        self.fd = sock.fileno()
        self.step = "hello" if handshake else "frames"   # hello -> proof -> frames
        self.inbuf = bytearray()                         # received, not yet parsed
        self.frame: bytearray | None = None              # the frame being read, once its size passed
        self.got = 0                                     # bytes of `frame` received
        self.method = ""
        self.reserved = 0                                # bytes of the port's buffer budget held
        self.since = 0.0                                 # idle since, or reading since
        self.busy = False
        self.registered = False
        self.closed = False
        self.challenge: auth.Challenge | None = None
        self.session: auth.Session | None = None
        self.messages: _Messages | None = None            # made at its first frame

    @property
    def partial(self) -> bool:
        """Part of a frame, or of the handshake, has arrived."""
        return bool(self.inbuf) or self.frame is not None or self.step == "proof"


class _Dropped(Exception):
    """A frame that must not be processed: the connection closes, counted under `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class RpcServer:
    """Serves one Thrift processor on host:port (port 0 picks a free one; see `.port`)."""

    def __init__(self, processor: Any, host: str, port: int, surface: Surface,
                 limits: ConnectionLimits = ConnectionLimits(), secret: auth.Secret | None = None,
                 events: ConnectionEvents | None = None, name: str = "gati"):
        if surface.authenticated and secret is None:
            raise auth.AuthError(f"{name}: an internal port needs the deployment secret")
        self.processor, self.surface, self.limits, self.name = processor, surface, limits, name
        self.secret = secret if surface.authenticated else None
        self.events = events if events is not None else ConnectionEvents()
        fds = descriptor_limit()
        self.max_open = max(1, min(limits.max_open, fds - min(FD_RESERVE, fds // 4)))
        if self.max_open < limits.max_open:
            log.warning("%s: at most %d connections (the descriptor limit is %d), not %d",
                        name, self.max_open, fds, limits.max_open)
        self._budget = max(int(limits.buffer_mb * 1024 * 1024), 1)
        self._buffered = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(socket.SOMAXCONN)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the leader at stop
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._state = threading.Lock()  # every connection's bookkeeping, the listener, the budget
        self._conns: dict[int, _Conn] = {}
        self._idle: OrderedDict[int, _Conn] = OrderedDict()      # by idle-since, oldest first
        self._reading: OrderedDict[int, _Conn] = OrderedDict()   # by first byte, oldest first
        self._waiting: list[_Conn] = []                          # for room in the buffer budget
        self._accepting = True
        self._accept_paused_until = 0.0
        self._stopping = False
        self._warnings: dict[str, Throttle] = {}
        self._working = Gate()  # frames being processed, reply and after-reply actions included
        self._leader = threading.Lock()                           # held by the thread in the poller
        self._ready: deque[tuple[_Conn, bytearray]] = deque()    # complete frames, not yet taken
        self._next_tick = 0.0
        self._threads: list[threading.Thread] = []

    # ---- lifecycle (any thread) -------------------------------------------------------------

    def start(self) -> "RpcServer":
        self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._threads = [threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
                         for i in range(self.limits.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop_accepting(self) -> None:
        """New connections are refused from now on; open ones keep working."""
        with self._state:
            self._accepting = False
            self._close_listener()

    def close(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let frames being processed finish (replies written), drop every connection."""
        if self._accepting:
            self.stop_accepting()
        self._working.wait_idle(grace_s)
        with self._state:
            self._stop()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        deadline = time.monotonic() + 2
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._leader:  # no thread is in the poller any more
            self._release_loop()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # ---- the threads: lead (poll and read), then process what was read ----------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                conn, frame = self._ready.popleft()
            except IndexError:
                with self._leader:
                    if not (self._stopping or self._ready):
                        self._lead()
                continue
            self._serve_frame(conn, frame)

    def _lead(self) -> None:
        """One round in the poller: accept, read, check deadlines."""
        events = self._selector.select(TICK_S)
        with self._state:
            for key, _ in events:
                self._handle(key.data)
            now = time.monotonic()
            if now >= self._next_tick:
                self._handle(lambda: self._expire(now))
                self._next_tick = now + TICK_S

    def _handle(self, event: Callable[[], None] | _Conn) -> None:
        """One event: a readable connection, or a callable. A bug in one must not stop the loop."""
        try:
            if isinstance(event, _Conn):
                self._on_readable(event)
            else:
                event()
        except Exception:
            log.exception("%s: unexpected error in the poller", self.name)
            if isinstance(event, _Conn):
                self._drop(event)

    def _release_loop(self) -> None:
        if self._selector.get_map() is not None:
            self._selector.close()
        for s in (self._wake_r, self._wake_w):
            s.close()

    def _on_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH if self._accepting else 0):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(e)
                elif e.errno != errno.ECONNABORTED:
                    self._refused("accept_failed", f"accept failed: {e}")
                return
            if len(self._conns) >= self.max_open and not self._evict_one():
                self._refused("refused_full", f"{len(self._conns)} connections open (the cap); "
                                              f"closed a new one from {addr[0]}")
                sock.close()
                continue
            self._open(sock, f"{addr[0]}:{addr[1]}")

    def _open(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        tune(sock)
        c = _Conn(sock, peer, handshake=self.surface.authenticated)
        self._conns[c.fd] = c
        self.events.count(self.surface.label, "accepted")
        self.events.open(self.surface.label, len(self._conns))
        self._register(c)
        self._settle(c, time.monotonic())

    def _out_of_descriptors(self, e: OSError) -> None:
        """EMFILE and kin: make room, pause a moment (the listener stays readable), go on."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._refused("out_of_descriptors", f"accept failed: {e.strerror} ({len(self._conns)} connections open, "
                                            f"descriptor limit {soft}); closing up to {EVICT_ON_EMFILE} idle "
                                            f"connections and pausing accept for {ACCEPT_BACKOFF_S} s", level=logging.ERROR)
        for _ in range(EVICT_ON_EMFILE):
            if not self._evict_one():
                break
        self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + ACCEPT_BACKOFF_S

    def _close_listener(self) -> None:
        if self._listener.fileno() >= 0:
            if self._accept_paused_until == 0.0 and self._threads:
                self._selector.unregister(self._listener)
            self._accept_paused_until = 0.0
            self._listener.close()

    def _stop(self) -> None:
        self._close_listener()
        for c in list(self._conns.values()):
            self._drop(c)
        self._stopping = True

    def _expire(self, now: float) -> None:
        """Deadlines: idle connections, slow senders, and the end of an accept pause."""
        while self._idle:
            c = next(iter(self._idle.values()))
            if now - c.since < self.limits.idle_s:
                break
            self._drop(c, "idle")
        while self._reading:
            c = next(iter(self._reading.values()))
            if now - c.since < self.limits.read_s:
                break
            self._drop(c, "slow", f"{c.peer} sent a partial frame for over {self.limits.read_s:g} s")
        if self._accept_paused_until and now >= self._accept_paused_until and self._accepting:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    # ---- reading a connection (the leader, holding _state) ------------------------------------

    def _on_readable(self, c: _Conn) -> None:
        if c.closed or not c.registered:  # an event from before the connection was dropped or taken
            return
        try:
            if c.frame is not None:
                n = c.sock.recv_into(memoryview(c.frame)[c.got:])
                c.got += n
            else:
                data = c.sock.recv(self._wanted(c))
                n = len(data)
                c.inbuf += data
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n == 0:  # the peer closed, or reset
            self._drop(c)
            return
        self._advance(c)
        self._settle(c, time.monotonic())

    def _wanted(self, c: _Conn) -> int:
        """Before a connection is authenticated, read no more than the handshake step needs."""
        if c.step == "hello":
            return auth.HELLO_SIZE - len(c.inbuf)
        if c.step == "proof":
            return auth.PROOF_SIZE - len(c.inbuf)
        return CHUNK

    def _advance(self, c: _Conn) -> None:
        """Consume what `c` has received: handshake steps, a frame's header, a complete frame."""
        try:
            while not (c.busy or c.closed):
                if c.step == "hello":
                    if len(c.inbuf) < auth.HELLO_SIZE or not self._answer_hello(c):
                        return
                elif c.step == "proof":
                    if len(c.inbuf) < auth.PROOF_SIZE:
                        return
                    c.session = auth.accept(self.secret, c.challenge, bytes(c.inbuf))
                    c.inbuf.clear()
                    c.step = "frames"
                elif c.frame is None:
                    if not self._begin_frame(c):
                        return
                elif c.got < len(c.frame):
                    return
                else:
                    self._dispatch(c)
        except auth.AuthError as e:
            self._drop(c, "auth_failed", f"{c.peer}: {e}")
        except _Dropped as e:
            self._drop(c, e.reason, f"{c.peer}: {e}")

    def _answer_hello(self, c: _Conn) -> bool:
        c.challenge = auth.challenge(self.secret, bytes(c.inbuf))
        c.inbuf.clear()
        try:  # 48 bytes into a new connection's empty send buffer: never partial in practice
            sent = c.sock.send(c.challenge.data)
        except OSError:
            sent = 0
        if sent != len(c.challenge.data):
            self._drop(c)
            return False
        c.step = "proof"
        return True

    def _begin_frame(self, c: _Conn) -> bool:
        """Check a frame's size and method from its first bytes; True once its buffer is allocated."""
        if len(c.inbuf) < 4:
            return False
        size = int.from_bytes(c.inbuf[:4], "big", signed=True)
        try:
            name = method_name(c.inbuf, 4, min(len(c.inbuf), 4 + max(size, 0)))
        except ValueError as e:
            raise _Dropped("malformed", f"not a Thrift message: {e}") from None
        if name is None:
            if size < 8 or len(c.inbuf) >= 4 + size:
                raise _Dropped("malformed", f"a frame of {size} bytes holds no Thrift message header")
            return False
        limit = self.surface.limits.get(name)
        if limit is None:
            raise _Dropped("refused_method", f"method {name!r} is not served on this port")
        body = size - (auth.TAG if self.secret is not None else 0)
        if body > limit:
            raise _Dropped("too_large", f"a {name} frame of {body} bytes, over its limit of {limit}")
        if body < 0:
            raise _Dropped("malformed", f"a {size}-byte frame cannot hold its tag")
        if not self._reserve(c, size):
            return False
        c.frame, c.method = bytearray(size), name
        c.got = min(size, len(c.inbuf) - 4)
        c.frame[:c.got] = c.inbuf[4:4 + c.got]
        del c.inbuf[:4 + c.got]
        return True

    def _reserve(self, c: _Conn, size: int) -> bool:
        """Room for a frame in the port's buffer budget; otherwise `c` waits (unread) for room."""
        if self._buffered and self._buffered + size > self._budget:
            if c not in self._waiting:
                self.events.count(self.surface.label, "waited_for_buffer")
                self._waiting.append(c)
            self._unregister(c)
            return False
        if c in self._waiting:
            self._waiting.remove(c)
        self._buffered += size
        c.reserved = size
        return True

    def _release(self, c: _Conn) -> None:
        self._buffered -= c.reserved
        c.reserved = 0

    def _admit_waiting(self) -> None:
        """Frames that waited for room in the buffer budget, in arrival order, while they fit."""
        for c in list(self._waiting):
            if self._stopping:
                return
            self._advance(c)  # reserves room (and leaves the queue), or waits on
            if c in self._waiting:
                return  # the next in line does not fit yet: those behind it wait too
            self._register(c)
            self._settle(c, time.monotonic())

    def _settle(self, c: _Conn, now: float) -> None:
        """File the connection under idle (nothing partial) or reading (deadline from the first byte)."""
        if c.busy or c.closed:
            return
        if c.partial:
            if self._idle.pop(c.fd, None) is not None or c.fd not in self._reading:
                c.since = now
                self._reading[c.fd] = c
        else:
            self._reading.pop(c.fd, None)
            if c.fd not in self._idle:
                c.since = now
                self._idle[c.fd] = c

    def _dispatch(self, c: _Conn) -> None:
        frame, c.frame, c.got = c.frame, None, 0
        c.busy = True
        self._reading.pop(c.fd, None)
        self._idle.pop(c.fd, None)
        self._unregister(c)
        self._ready.append((c, frame))  # taken by this thread once it leaves the poller, or another

    # ---- a frame being processed (any thread, outside the poller) ------------------------------

    def _serve_frame(self, c: _Conn, frame: bytearray) -> None:
        keep = False
        try:
            with self._working.track():
                reply = self._process(c, self._verified(c, frame))
                if reply:
                    self._write(c, reply)
                self._run_after_reply()
            keep = True
        except _Dropped as e:
            self._refused(e.reason, f"{c.peer}: {e}")
        except (OSError, EOFError, TTransport.TTransportException):
            pass  # the peer went away, or stopped reading its replies
        except TProtocolException as e:
            self._refused("malformed", f"{c.peer}: a {c.method} message that does not decode: {e}")
        except Exception:  # a malformed message: drop this peer, keep serving the others
            log.exception("%s: dropped a connection after an unexpected error", self.name)
        finally:
            _after_reply.actions = None
            with self._state:
                self._finished(c, keep)

    def _verified(self, c: _Conn, frame: bytearray) -> bytes:
        if c.session is None:
            return bytes(frame)
        view = memoryview(frame)
        message, tag = view[:-auth.TAG], view[-auth.TAG:]
        if not c.session.check(message, tag):
            raise _Dropped("auth_failed", f"a {c.method} frame whose tag does not verify")
        return bytes(message)

    def _process(self, c: _Conn, message: bytes) -> bytes:
        limit = self.surface.limits[c.method]
        if c.messages is None:
            c.messages = _Messages(limit)
        c.messages.load(message, limit)
        _after_reply.actions = []
        self.processor.process(c.messages.protocol, c.messages.protocol)
        return c.messages.reply()

    def _write(self, c: _Conn, reply: bytes) -> None:
        tag = c.session.seal(reply) if c.session is not None else b""
        c.sock.settimeout(self.limits.read_s)  # a peer that stops reading its replies is dropped
        try:
            c.sock.sendall((len(reply) + len(tag)).to_bytes(4, "big") + reply + tag)
        finally:
            c.sock.setblocking(False)

    def _run_after_reply(self) -> None:
        actions, _after_reply.actions = _after_reply.actions, None
        for action in actions:
            try:
                action()
            except Exception:  # the reply is out; a failed follow-up must not drop the connection
                log.exception("%s: an after-reply action failed", self.name)

    # ---- bookkeeping (any thread, holding _state) ----------------------------------------------

    def _finished(self, c: _Conn, keep: bool) -> None:
        c.busy = False
        self._release(c)
        if c.closed:  # dropped while its worker held it (_drop left the socket open)
            c.sock.close()
        elif not keep or self._stopping:
            self._drop(c)
        else:
            self._register(c)
            self._advance(c)  # the next frame may already be in
            self._settle(c, time.monotonic())
        self._admit_waiting()

    def _register(self, c: _Conn) -> None:
        if not (c.registered or c.closed or c.busy):
            self._selector.register(c.sock, selectors.EVENT_READ, c)
            c.registered = True

    def _unregister(self, c: _Conn) -> None:
        if c.registered:
            self._selector.unregister(c.sock)
            c.registered = False

    def _evict_one(self) -> bool:
        """Close the longest-idle connection; False when none is idle."""
        if not self._idle:
            return False
        c = next(iter(self._idle.values()))
        self._drop(c, "evicted", f"{len(self._conns)} connections open (the cap); closed the longest idle, "
                                 f"from {c.peer}")
        return True

    def _drop(self, c: _Conn, reason: str = "", detail: str = "") -> None:
        if c.closed:
            return
        c.closed = True
        if reason:
            self._refused(reason, detail, level=logging.DEBUG if reason == "idle" else logging.WARNING)
        self._unregister(c)
        self._idle.pop(c.fd, None)
        self._reading.pop(c.fd, None)
        if c in self._waiting:
            self._waiting.remove(c)
        self._conns.pop(c.fd, None)
        if c.busy:  # a worker holds the socket: wake it, and close once it is done (_finished)
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        c.sock.close()
        if c.reserved:
            self._release(c)
            self._admit_waiting()

    def _refused(self, reason: str, detail: str, level: int = logging.WARNING) -> None:
        self.events.count(self.surface.label, reason)
        throttle = self._warnings.setdefault(reason, Throttle())
        if detail and level >= logging.WARNING and throttle.allow():
            log.log(level, "%s (%s port): %s [%s; logged at most every %d s]", self.name, self.surface.label,
                    detail, reason, throttle.every_s)


def wait_for_signal(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Block the main thread until one of `signals` arrives; return it."""
    got = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        got.set()

    for s in signals:
        signal.signal(s, handler)
    while not got.wait(0.5):  # short waits keep the main thread responsive to signals
        pass
    return received[0]
