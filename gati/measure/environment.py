"""The environment a measurement ran in, recorded in every results JSON (`gati eval --json`,
`gati bench --json`, and the first line of their `--records` files): numbers mean little without the
machine, the versions and the threads."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from gati import __version__

REPO = Path(__file__).resolve().parents[2]


def environment() -> dict:
    import numpy
    import torch
    cuda = torch.cuda.is_available()
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gati": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "argv": sys.argv[1:],
    }


def records_header() -> str:
    """The first line of a per-request records file: `{"environment": ...}`; every later line is one request."""
    return json.dumps({"environment": environment()}) + "\n"


def read_records(path: str | Path) -> tuple[dict | None, list[dict]]:
    """A records file's environment (None for a file written before the header existed) and its requests."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if rows and set(rows[0]) == {"environment"}:
        return rows[0]["environment"], rows[1:]
    return None, rows


def _git_commit() -> str | None:
    """The checkout's commit (with `+dirty` when files changed), or None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
