"""Copy a bundle with only some cache variants, e.g. to ship it to a GPU host with a size limit.

    python experiments/slim_bundle.py bundles/r18 gpu/r18 --variants linear,mlp,fc,convfc

The copy keeps the calibration scores of every variant, but only the kept variants' cache files
and manifest entries, so `gati plan --bundle COPY --device D` re-plans among those alone. If the
current plan uses a dropped variant, the copy gets an empty plan (every request runs the whole
model) until it is re-planned. The checkpoint travels inside the bundle, as in every bundle.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gati.bundle import read_manifest, revise_bundle
from gati.runtime.plan import Plan


def slim(src: Path, dst: Path, variants: set[str]) -> None:
    m = read_manifest(src)
    plan = m.plan if all(e.variant in variants for e in m.plan.entries) else Plan([], m.plan.mode)
    revise_bundle(src, m.replace(caches=[c for c in m.caches if c.variant in variants], plan=plan), out=dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--variants", required=True, help="comma-separated variants to keep")
    a = p.parse_args()
    slim(a.src, a.dst, set(a.variants.split(",")))


if __name__ == "__main__":
    main()
