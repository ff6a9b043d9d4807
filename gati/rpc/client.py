"""Clients for people and tools: `ping` any service, `GatiClient` for the aggregator's front door.

The front door (the aggregator's public port) needs no credentials; `ping` and `status` of an
internal port need the deployment's secret (`secret=Secret.load(cfg.secret_file)`).

`GatiClient.predict_*` raise the IDL's typed errors (InvalidRequest, Overloaded, Unavailable,
DeadlineExceeded) as the aggregator sent them, and `PeerUnavailable` when the aggregator itself
cannot be reached. One client holds one connection: give each thread its own.
"""
from __future__ import annotations

import numpy as np

from gati.errors import GatiError
from gati.rpc.auth import Secret
from gati.rpc.gen.gati_idl import Aggregator, Service
from gati.rpc.gen.gati_idl.ttypes import Prediction, Request, ServiceStatus
from gati.rpc.tensors import to_tensor
from gati.rpc.transport import Connection, Limits, PeerUnavailable, Pool

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def parse_endpoint(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); GatiError naming the expected form otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GatiError(f"endpoint must look like HOST:PORT (e.g. 127.0.0.1:9090), got {text!r}")
    return host, int(port)


def ping(host: str, port: int, timeout_s: float = 1.0, secret: Secret | None = None) -> bool:
    """True when a GATI service answers ping() at host:port within timeout_s."""
    try:
        conn = Connection(Service.Client, host, port, Limits(connect_s=timeout_s, call_s=timeout_s, secret=secret))
    except PeerUnavailable:
        return False
    try:
        return bool(conn.client.ping())
    except Exception:  # anything but a proper answer means "not ready"
        return False
    finally:
        conn.close()


def status(host: str, port: int, timeout_s: float = 2.0, secret: Secret | None = None) -> ServiceStatus:
    pool = Pool(Service.Client, host, port, Limits(connect_s=timeout_s, call_s=timeout_s, secret=secret), size=1)
    try:
        return pool.call("status")
    finally:
        pool.close()


class GatiClient:
    """The aggregator's predict API over one persistent connection."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0, connect_s: float = 2.0,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self._pool = Pool(Aggregator.Client, host, port, Limits(connect_s, timeout_s, max_bytes), size=1,
                          name=f"aggregator@{host}:{port}")

    def predict(self, request: Request) -> Prediction:
        return self._pool.call("predict", request)

    def predict_image(self, data: bytes, deadline_ms: int | None = None) -> Prediction:
        """The bytes of one image file (PNG, JPEG, BMP, GIF, WebP, TIFF), of any size."""
        return self.predict(Request(image=data, deadline_ms=deadline_ms))

    def predict_pixels(self, pixels: np.ndarray, deadline_ms: int | None = None) -> Prediction:
        """uint8 H x W x C pixels of one image, C = 1 or 3, any size (preprocessed and resized by the server)."""
        return self.predict(Request(tensor=to_tensor(pixels), deadline_ms=deadline_ms))

    def status(self) -> ServiceStatus:
        return self._pool.call("status")

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "GatiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
