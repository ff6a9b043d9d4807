"""Scoring: every fitted cache's answers on the calibration images, stored beside the base model's.

These arrays (`calibration.npz` in a bundle) are all that re-planning needs: `gati calibrate` and
`gati plan` re-target a bundle from them without the data or a pass of the base model.
"""
from __future__ import annotations

import numpy as np
import torch

from gati.bundle.layout import CacheKey, score_names, scored_caches
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
        pred_name, conf_name = score_names(cut, variant)
        arrays[pred_name] = torch.cat(pred).numpy().astype(np.int64)
        arrays[conf_name] = torch.cat(conf).numpy().astype(np.float32)
    return arrays


def scores_from(arrays: dict[str, np.ndarray]) -> dict[CacheKey, Scores]:
    """Every stored cache's scores: its confidence and whether it agrees with the base model."""
    scores = {}
    for cut, variant in scored_caches(list(arrays)):
        pred_name, conf_name = score_names(cut, variant)
        scores[(cut, variant)] = Scores(cut, variant, arrays[conf_name], arrays[pred_name] == arrays["base"])
    return scores
