"""A cache as bytes (what `Cache.save` writes), so versions can travel over Thrift."""
from __future__ import annotations

import tempfile
from pathlib import Path

from gati.cache import Cache, load_cache


def cache_to_bytes(cache: Cache) -> bytes:
    with tempfile.TemporaryDirectory(prefix="gati-cache-") as tmp:
        path = Path(tmp) / "cache.pt"
        cache.save(path)
        return path.read_bytes()


def cache_from_bytes(blob: bytes) -> Cache:
    """BundleError when the bytes are not a saved cache."""
    with tempfile.TemporaryDirectory(prefix="gati-cache-") as tmp:
        path = Path(tmp) / "cache.pt"
        path.write_bytes(blob)
        return load_cache(path)


def mismatch(cache: Cache, served: Cache) -> str | None:
    """Why `cache` cannot replace `served` at its cut (another variant, input shape or class count); None if it can."""
    if cache.variant != served.variant or cache.in_shape != served.in_shape or cache.num_classes != served.num_classes:
        return f"it is a {cache!r}, the cut serves a {served!r}"
    return None
