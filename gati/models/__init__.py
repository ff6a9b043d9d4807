"""Base architectures, their default cut points and checkpoint loading (splitting into stages: `split.py`)."""

from gati.models.checkpoint import sha256_file
from gati.models.registry import ARCHS, build_model, default_cuts, load_checkpoint

__all__ = ["ARCHS", "build_model", "default_cuts", "load_checkpoint", "sha256_file"]
