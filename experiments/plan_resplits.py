"""What planning on one half and certifying on the other leaves of the plan's promise, over random re-splits.

A bundle's plan is chosen, and its threshold path built, on the *select* half of the calibration images; the path
is then certified on the other half, and fixed-sequence testing keeps the last vector before the first that
fails. Over `--splits` random class-balanced re-splits of the stored calibration scores (no pass of the model),
this re-runs exactly that (`gati.pipeline.planner.make_plan`, on those halves, at the given look's alpha) and
prints, per split, the speed-up the plan expected on select and what the certified plan gives on the certify half
(both modelled with the bundle's profile), and the hit rates. The gap between the two is what
the procedure loses to noise on either half: the winner's curse of choosing a plan by its errors on select, and
the fixed-sequence test stopping at the first unlucky vector. It says how typical one bundle's fixed split is.

    python experiments/plan_resplits.py --bundle bundles/sweep/vgg16-speechcommands-cpu-t0.99 --target 0.99 \\
        --look 2 --splits 40
"""
from __future__ import annotations

import argparse

import numpy as np

from gati.bundle import read_bundle
from gati.measure.resplit import random_halves
from gati.pipeline.certify import Costs, exit_costs, simulate
from gati.pipeline.planner import CertifyContext, make_plan
from gati.pipeline.score import scores_from


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--look", type=int, default=1, help="the look whose alpha to test at (the bundle's own: its ledger)")
    p.add_argument("--splits", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    info = read_bundle(a.bundle)
    m = info.manifest
    arrays, ids = info.calibration()
    scores = scores_from(arrays)
    nbytes = {(c.cut, c.variant): c.nbytes for c in m.caches}
    context = CertifyContext("resplit", a.look, m.dataset, m.calibration.split, m.certified.scored_on, m.profile.device)
    rng = np.random.default_rng(a.seed)
    expected, certified = [], []
    print(f"{a.bundle}: target {a.target}, look {a.look}, {len(ids)} calibration images")
    for split in range(a.splits):
        select, cert = random_halves(arrays["labels"], rng)
        planned = make_plan(arrays, ids, arrays["labels"], m.profile, nbytes, m.cuts, a.target, context,
                            halves=(select, cert))
        keys = [(e.cut, e.variant) for e in planned.plan.entries]
        entries = [scores[k].subset(cert) for k in keys]
        thresholds = np.array([e.threshold for e in planned.plan.entries])
        sim = simulate(entries, thresholds, exit_costs(entries, Costs.of(m.profile, keys), planned.plan.mode))
        c = planned.certified
        expected.append(m.profile.base_ms / planned.expected.latency_ms)
        certified.append(m.profile.base_ms / sim["latency_ms"])
        print(f"split {split:>3}: {len(keys)} exits served; expected on select {expected[-1]:.2f}x at "
              f"{planned.expected.hit_rate:.1%} hits; certified {certified[-1]:.2f}x at {c.hit_rate:.1%} hits, "
              f"agreement {c.agreement:.4f} ({c.vectors_tested} vectors tested)", flush=True)
    q = np.percentile(certified, [5, 50, 95])
    print(f"expected on select: median {np.median(expected):.2f}x; certified: median {q[1]:.2f}x, "
          f"5th-95th percentile {q[0]:.2f}-{q[2]:.2f}x, min {min(certified):.2f}x, max {max(certified):.2f}x")


if __name__ == "__main__":
    main()
