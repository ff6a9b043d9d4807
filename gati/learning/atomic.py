"""Files written atomically: to a temporary sibling, flushed to disk, renamed over the old one, so that a crash
(even SIGKILL) leaves the old content or the new, never a mix. The learner's state directory
(gati/learning/state.py) and the cluster services' (gati/rpc/durable.py, the index's online tier) are written so.
No torch here: the neighbour-index service keeps its tier's files with these alone.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from gati.errors import GatiError

TEMP_PREFIX = ".tmp-"  # temporary files and folders; removed, never read, when a directory is opened


def remove_leftovers(*folders: Path) -> None:
    """Delete the temporary files and folders a crash mid-write left in `folders` (never read as content)."""
    for folder in folders:
        for leftover in folder.glob(TEMP_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _atomic(path, lambda f: np.savez(f, **arrays))


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary sibling, flushed to disk, then renamed over `path`: readers see old or new."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_synced(path: Path, data: bytes) -> None:
    """`data` written to `path` and flushed to disk: for files inside a temporary folder that is renamed as a whole."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of the .npz file at `path`; None when there is none, GatiError when it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise GatiError(f"{path} is corrupt: {e}") from e
