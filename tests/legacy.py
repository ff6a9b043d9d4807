"""Manifests as an older gati wrote them (format 1), for the compatibility tests."""
from __future__ import annotations


def as_format_1(raw: dict, checkpoint: str) -> dict:
    """`raw` (a format-2 manifest mapping) rewritten as format 1: the checkpoint by absolute path, the
    certificate quoting its Clopper-Pearson value as the bound, no ledger of looks."""
    c = raw.pop("certified")
    raw["certified"] = {"lower_bound": c["nominal_lower_bound"], "confidence": 0.95, "method": c["method"],
                        "agreement": c["agreement"], "hit_rate": c["hit_rate"], "n": c["n"],
                        "wrong_hits": c["wrong_hits"], "vectors_tested": c["vectors_tested"],
                        "select_n": c["select_n"], "select_margin": c["select_margin"]}
    raw["format_version"] = 1
    raw["checkpoint"] = {"path": checkpoint, "sha256": raw["checkpoint"]["sha256"]}
    raw.pop("looks", None)
    return raw
