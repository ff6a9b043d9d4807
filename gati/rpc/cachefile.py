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
