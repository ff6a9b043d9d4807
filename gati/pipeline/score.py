"""Scoring: every fitted cache's answers on the calibration images, stored beside the base model's.

These arrays (`calibration.npz` in a bundle) are all that re-planning needs: `gati calibrate` and
`gati plan` re-target a bundle from them without the data or a pass of the base model.
"""
from __future__ import annotations

import numpy as np
import torch

from gati.pipeline.certify import Scores


def calibration_arrays(caches: dict, feats: dict, base: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every cache's label and confidence on the calibration images, next to the base model's."""
    arrays = {"base": base.astype(np.int64), "labels": np.asarray(labels, dtype=np.int64)}
    for (cut, variant), cache in caches.items():
        pred, conf = [], []
        x = feats[(cut, cache.reducer_key)]
        for start in range(0, len(x), 1024):
            p, c = cache.predict(x[start:start + 1024])
            pred.append(p)
            conf.append(c)
        arrays[f"pred_{cut}_{variant}"] = torch.cat(pred).numpy().astype(np.int64)
        arrays[f"conf_{cut}_{variant}"] = torch.cat(conf).numpy().astype(np.float32)
    return arrays


def scores_from(arrays: dict[str, np.ndarray]) -> dict[tuple[int, str], Scores]:
    base = arrays["base"]
    scores = {}
    for name in arrays:
        if name.startswith("pred_"):
            _, cut, variant = name.split("_", 2)
            key = (int(cut), variant)
            scores[key] = Scores(key[0], variant, arrays[f"conf_{cut}_{variant}"], arrays[name] == base)
    return scores
