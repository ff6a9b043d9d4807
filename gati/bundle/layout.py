"""Where things are in a bundle folder, and the one spelling of each name in it.

    <bundle>/manifest.yaml             the Manifest (gati.bundle.manifest)
    <bundle>/checkpoint.pt             the base model's weights (format 2; format 1 named an absolute path)
    <bundle>/caches/NN-<variant>.pt    every fitted cache (the plan uses some of them)
    <bundle>/calibration.npz           every cache's answers on the calibration images
    <bundle>/calibration_ids.txt       the calibration image ids (eval refuses overlapping splits)

A cache is named by the pair (cut index, variant), `CacheKey`, everywhere in memory; its text
spelling (`cache_key`: "3:fc") keys the profile, its file name is `cache_file` and its arrays in
calibration.npz are `score_names`.
"""
from __future__ import annotations

MANIFEST = "manifest.yaml"
CHECKPOINT = "checkpoint.pt"
CALIBRATION = "calibration.npz"
CALIBRATION_IDS = "calibration_ids.txt"

CacheKey = tuple[int, str]   # (cut index, variant)


def cache_key(cut: int, variant: str) -> str:
    return f"{cut}:{variant}"


def cache_file(cut: int, variant: str) -> str:
    return f"caches/{cut:02d}-{variant}.pt"


def score_names(cut: int, variant: str) -> tuple[str, str]:
    """The calibration.npz arrays of one cache: its labels and its confidences."""
    return f"pred_{cut}_{variant}", f"conf_{cut}_{variant}"


def scored_caches(names: list[str]) -> list[CacheKey]:
    """The caches that have scores among calibration.npz's array names."""
    keys = []
    for name in names:
        if name.startswith("pred_"):
            cut, variant = name.removeprefix("pred_").split("_", 1)
            keys.append((int(cut), variant))
    return keys
