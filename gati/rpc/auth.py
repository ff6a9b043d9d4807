"""Authentication between services: one secret per deployment, a handshake, a tag on every frame.

Every port except the aggregator's public one speaks Thrift's framed binary protocol inside an
authenticated session. The client speaks first:

    client -> server   MAGIC, client nonce (16 bytes)
    server -> client   server nonce (16), HMAC(secret, "server" | client nonce | server nonce)
    client -> server   HMAC(secret, "client" | client nonce | server nonce)

Each side proves it holds the deployment's secret without sending it, and the session key,
HMAC(secret, "session" | nonces), is fresh for every connection. Every frame then ends with
HMAC-SHA256(session key, direction | frame number | message): a frame cannot be forged, altered,
reordered, or replayed into this connection or another. A peer that fails any check is
disconnected before its frame reaches a handler.

Why a shared secret and not mutual TLS: one 32-byte file per deployment is all there is to
provision (created by `make deploy-local`, an S3 object readable by the instance role on AWS),
nothing expires, and no CA or per-service certificate has to be generated, shipped or rotated.
What it does not give is confidentiality: messages (features, labels, cache files) travel in
clear, which the deployment's private network and security group already confine; TLS would be
the next step if they had to cross an untrusted network.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from gati.errors import GatiError

MAGIC = b"GAv1"
NONCE = 16
TAG = 32                                   # HMAC-SHA256 digest, after every frame's message
HELLO_SIZE = len(MAGIC) + NONCE            # client -> server
CHALLENGE_SIZE = NONCE + TAG               # server -> client
PROOF_SIZE = TAG                           # client -> server
SECRET_BYTES = 32


class AuthError(GatiError):
    """The deployment secret is missing or unusable, or a peer failed the handshake or a frame's check."""


class Secret:
    """The deployment's shared key. Its repr never shows the key (it may end up in a log line)."""

    def __init__(self, key: bytes):
        if len(key) < SECRET_BYTES:
            raise AuthError(f"a deployment secret needs at least {SECRET_BYTES} bytes, got {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    def mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._key, b"".join(parts), hashlib.sha256).digest()

    @classmethod
    def generate(cls) -> "Secret":
        return cls(secrets.token_bytes(SECRET_BYTES))

    def text(self) -> str:
        """The form stored in a secret file: hex, one line."""
        return self._key.hex() + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "Secret":
        """Read a secret file; refused when missing, readable by others, or malformed."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except FileNotFoundError:
            raise AuthError(f"the deployment secret {path} does not exist (`make deploy-local` creates "
                            f"one; every service of a cluster must read the same file)") from None
        except OSError as e:
            raise AuthError(f"cannot read the deployment secret {path}: {e}") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"the deployment secret {path} is accessible by other users "
                            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise AuthError(f"the deployment secret {path} is not {SECRET_BYTES} or more bytes "
                            f"in hex") from e


def create_secret(path: str | Path) -> bool:
    """Write a fresh secret to `path` (mode 0600) unless a file is there; True when created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(Secret.generate().text())
    return True


class Session:
    """One connection's key and frame counters: `seal` tags what this side sends, `check` what it receives."""

    def __init__(self, secret: Secret, client_nonce: bytes, server_nonce: bytes, server_side: bool):
        self._mac = hmac.new(secret.mac(b"session", client_nonce, server_nonce), digestmod=hashlib.sha256)
        self._out, self._in = (b"S", b"C") if server_side else (b"C", b"S")
        self._sent = 0
        self._received = 0

    def seal(self, message: bytes) -> bytes:
        tag = self._tag(self._out, self._sent, message)
        self._sent += 1
        return tag

    def check(self, message: bytes | memoryview, tag: bytes | memoryview) -> bool:
        ok = hmac.compare_digest(self._tag(self._in, self._received, message), bytes(tag))
        self._received += 1
        return ok

    def _tag(self, direction: bytes, number: int, message: bytes | memoryview) -> bytes:
        mac = self._mac.copy()
        mac.update(direction + number.to_bytes(8, "big"))
        mac.update(message)
        return mac.digest()


# ---- the handshake: the client's steps, then the server's --------------------------------------

@dataclass(frozen=True)
class Hello:
    """What a client sends first, and the nonce it must remember."""
    data: bytes
    nonce: bytes


def hello() -> Hello:
    nonce = secrets.token_bytes(NONCE)
    return Hello(MAGIC + nonce, nonce)


def prove(secret: Secret, sent: Hello, challenge: bytes) -> tuple[bytes, Session]:
    """Client: check the server's proof, return ours and the session."""
    server_nonce, server_proof = challenge[:NONCE], challenge[NONCE:]
    if len(challenge) != CHALLENGE_SIZE or not hmac.compare_digest(
            server_proof, secret.mac(b"server", sent.nonce, server_nonce)):
        raise AuthError("the server does not hold this deployment's secret")
    return (secret.mac(b"client", sent.nonce, server_nonce),
            Session(secret, sent.nonce, server_nonce, server_side=False))


@dataclass(frozen=True)
class Challenge:
    """What the server answers a hello with, and the nonces it needs to check the client's proof."""
    data: bytes
    client_nonce: bytes
    server_nonce: bytes


def challenge(secret: Secret, data: bytes) -> Challenge:
    """Server: answer a client's hello."""
    if len(data) != HELLO_SIZE or not data.startswith(MAGIC):
        raise AuthError("not a GATI handshake (an unauthenticated client?)")
    client_nonce, server_nonce = data[len(MAGIC):], secrets.token_bytes(NONCE)
    return Challenge(server_nonce + secret.mac(b"server", client_nonce, server_nonce), client_nonce, server_nonce)


def accept(secret: Secret, sent: Challenge, proof: bytes) -> Session:
    """Server: check the client's proof; the session on success."""
    if not hmac.compare_digest(proof, secret.mac(b"client", sent.client_nonce, sent.server_nonce)):
        raise AuthError("the client does not hold this deployment's secret")
    return Session(secret, sent.client_nonce, sent.server_nonce, server_side=True)
