"""GATI: prediction serving with learned caches.

    import gati
    model = gati.load("bundles/r18")        # the bundle's model and caches, in this process
    print(model.predict("cat.png"))         # Prediction(label=3, class_name='cat', confidence=0.98, ...)

`predict` takes an image file's path, its encoded bytes, a PIL image, uint8 H x W x 3 pixels, or
a preprocessed float tensor; see gati.api.Model. The command line is `gati` (gati/cli.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from pathlib import Path

    from gati.api import Model


def load(bundle: str | Path, device: str = "cpu", mode: str | None = None) -> Model:
    """Load a bundle for prediction in this process (torch is imported on first use, not by `import gati`)."""
    from gati.api import Model
    return Model.load(bundle, device, mode)
