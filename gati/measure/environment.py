"""The environment a measurement ran in, recorded in every results JSON (`gati eval --json`,
`gati bench --json`): numbers mean little without the machine, the versions and the threads."""
from __future__ import annotations

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
