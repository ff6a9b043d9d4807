"""Copy a bundle with only some cache variants, e.g. to ship it to a GPU host with a size limit.

    python experiments/slim_bundle.py bundles/r18 gpu/r18 --variants linear,mlp,fc,convfc \
        --checkpoint gpu/cifar10_resnet18.pt

The copy keeps the calibration scores of every variant, but only the kept variants' cache files
and manifest entries, so `gati plan --bundle COPY --device D` re-plans among those alone. If the
current plan uses a dropped variant, the copy gets an empty plan (every request runs the whole
model) until it is re-planned. `--checkpoint` points the copy at the checkpoint's path on the
target host (its SHA-256 is still checked when the bundle loads).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from gati.bundle import cache_file


def slim(src: Path, dst: Path, variants: set[str], checkpoint: str | None) -> None:
    manifest = yaml.safe_load((src / "manifest.yaml").read_text())
    manifest["caches"] = [c for c in manifest["caches"] if c["variant"] in variants]
    if any(e["variant"] not in variants for e in manifest["plan"]["entries"]):
        manifest["plan"]["entries"] = []
    if checkpoint:
        manifest["checkpoint"]["path"] = checkpoint
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "caches").mkdir(parents=True)
    for c in manifest["caches"]:
        shutil.copy(src / cache_file(c["cut"], c["variant"]), dst / cache_file(c["cut"], c["variant"]))
    for name in ("calibration.npz", "calibration_ids.txt"):
        shutil.copy(src / name, dst / name)
    (dst / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--variants", required=True, help="comma-separated variants to keep")
    p.add_argument("--checkpoint", help="the checkpoint's path where the copy will be used")
    a = p.parse_args()
    slim(a.src, a.dst, set(a.variants.split(",")), a.checkpoint)


if __name__ == "__main__":
    main()
