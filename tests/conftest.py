"""Shared fixtures: the read-only shared material, the suite's torch threads, and a private data cache per test
session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.threads import SUITE_THREADS

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _suite_threads() -> None:
    torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Decoded-split caches go to a fresh folder, so tests never read a stale cache nor write to the user's home."""
    old = os.environ.get("GATI_CACHE_DIR")
    os.environ["GATI_CACHE_DIR"] = str(tmp_path_factory.mktemp("gati-cache"))
    yield
    if old is None:
        os.environ.pop("GATI_CACHE_DIR", None)
    else:
        os.environ["GATI_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder ($GATI_SHARED, default ../shared beside the repo); skipped if absent, failed under CI."""
    path = Path(os.environ.get("GATI_SHARED") or REPO_ROOT.parent / "shared")
    if not path.is_dir():
        message = f"shared material not found at {path} (set GATI_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic 4-class image folder and a briefly trained TinyNet checkpoint for it."""
    from tests.tinynet import train_tiny, write_folder
    root = tmp_path_factory.mktemp("tiny")
    data = write_folder(root / "data")
    return data, train_tiny(data, root / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle (fitted, profiled, planned, certified) for the tiny model: built in seconds."""
    from gati.pipeline.build import BuildConfig, build
    from tests.tinynet import CUTS
    data, checkpoint = tiny_data
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build(BuildConfig(checkpoint=checkpoint, dataset="imagefolder", data_dir=data, out=out,
                      model_module="tests.tinynet:factory", cuts=CUTS, target=0.9,
                      variants=["linear", "mlp"] + (["knn"] if _has_faiss() else []), train_limit=None))
    return out


def _has_faiss() -> bool:
    """CI and every development install have FAISS; a GPU host that only runs the CUDA tests may not."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
