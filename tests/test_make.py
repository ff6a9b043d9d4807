"""The Makefile's promises: `make demo` builds the bundle `make deploy-local` serves, and SHARED
reaches the tests (as GATI_SHARED). Read from `make -n`, which runs nothing."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gati.rpc.config import load_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=True).stdout


def test_the_demo_builds_the_bundle_deploy_local_serves(tmp_path):
    out = re.search(r"--out (\S+)", dry_run("demo", f"DEMO={tmp_path / 'none' / 'r18'}"))
    assert out is not None  # a missing bundle gets built
    default = re.search(r"gati eval --bundle (\S+)", dry_run("demo"))
    assert (REPO / default.group(1)).resolve() == load_config(REPO / "deploy" / "local.yaml").bundle


def test_shared_reaches_the_tests(tmp_path):
    assert f"GATI_SHARED={tmp_path} " in dry_run("test", f"SHARED={tmp_path}")
    assert "deploy/local.py status" in dry_run("status-local")
