"""The parameter-free reducers that gati/cache/reduce.py builds: their names, and the shapes they reduce to.

Kept apart from torch: a cluster config names the online tier's reducer, and reading a config (deploy-local's status
and stop, the supervisor) should not import torch to check a name; nor should the neighbour-index service, which
sizes the online tier's vectors by a reducer's output.
"""
from __future__ import annotations

from gati.errors import GatiError

REDUCERS: tuple[str, ...] = ("gap", "gapmax", "pool2", "pool4", "pool8")


def check_reducer(key: str) -> None:
    """GatiError unless `key` names a reducer."""
    if key not in REDUCERS:
        raise GatiError(f"unknown reducer {key!r}; known reducers: {', '.join(REDUCERS)}")


def reduced_shape(key: str, act_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """Per-sample shape of reducer `key`'s output for a C x H x W activation."""
    check_reducer(key)
    c, h, w = act_shape
    if key == "gap":
        return (c,)
    if key == "gapmax":
        return (2 * c,)
    size = int(key.removeprefix("pool"))
    return (c, min(h, size), min(w, size))
