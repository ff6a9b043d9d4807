"""What each listening port serves: its methods, the largest request frame each may carry, and
whether callers must authenticate.

There is one public surface: the aggregator's client port serves `predict`, `ping` and `status`,
unauthenticated. Everything else (the aggregator's callbacks `finished` and `shadowed`, and every
method of the executor, predictors, index and retrainer) is served on internal ports, to callers
that hold the deployment's secret (gati/rpc/auth.py).

The server reads a frame's method name from its first bytes (Thrift's binary protocol puts it
right after the frame's size) and closes the connection before reading the rest when the port
does not serve that method or the frame is larger than the method's limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

CONTROL_BYTES = 16 * 1024     # ping, status, cancel, finished, ...: a handful of scalar fields
ENVELOPE_BYTES = 1024         # a request's message header and field headers around its payload

# Per internal service: method -> "control" (a few fields) or "data" (tensors, samples, cache
# files: up to the config's max_message_mb). ping and status are everywhere and control.
INTERNAL_METHODS: dict[str, dict[str, str]] = {
    "aggregator": {"finished": "control", "shadowed": "data"},
    "executor": {"run": "data", "cancel": "control"},
    "predictor": {"lookup": "data", "caches": "control", "cache": "control", "deploy": "data"},
    "index": {"add": "data", "search": "data", "size": "control", "reset": "control", "export": "control",
              "judge": "data", "remember": "data", "deploy_tier": "control", "tier": "control"},
    "retrainer": {"add_samples": "data", "retrain": "control", "propose": "data", "fallback": "control"},
}
COMMON = ("ping", "status")


@dataclass(frozen=True)
class Surface:
    label: str                    # "public" or "internal": names the port in logs and counters
    limits: Mapping[str, int]     # method -> largest request frame it may carry, in bytes
    authenticated: bool

    @property
    def largest(self) -> int:
        return max(self.limits.values())


def public(predict_bytes: int) -> Surface:
    """The aggregator's client port; `predict_bytes` is the largest request payload accepted."""
    return Surface("public", {"predict": predict_bytes + ENVELOPE_BYTES,
                              **{m: CONTROL_BYTES for m in COMMON}}, authenticated=False)


def internal(service: str, data_bytes: int) -> Surface:
    """An internal port of `service` (a key of INTERNAL_METHODS); data frames up to `data_bytes`."""
    sizes = {"control": CONTROL_BYTES, "data": max(data_bytes, CONTROL_BYTES)}
    limits = {m: CONTROL_BYTES for m in COMMON}
    limits.update({m: sizes[kind] for m, kind in INTERNAL_METHODS[service].items()})
    return Surface("internal", limits, authenticated=True)
