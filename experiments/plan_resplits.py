"""What planning on one half and certifying on the other leaves of the plan's promise, over random re-splits.

A bundle's plan is chosen, and its threshold path built, on the *select* half of the calibration images; the path
is then certified on the other half, and fixed-sequence testing keeps the last vector before the first that
fails. Over `--splits` random class-balanced re-splits of the stored calibration scores (no pass of the model),
this re-runs exactly that (`gati.pipeline.optimizer.optimize`, then `gati.pipeline.certify.calibrate` at the given
look's alpha) and prints, per split, the speed-up the plan expected on select and what the certified vector gives
on the certify half (both modelled with the bundle's profile), and the hit rates. The gap between the two is what
the procedure loses to noise on either half: the winner's curse of choosing a plan by its errors on select, and
the fixed-sequence test stopping at the first unlucky vector. It says how typical one bundle's fixed split is.

    python experiments/plan_resplits.py --bundle bundles/sweep/vgg16-speechcommands-cpu-t0.99 --target 0.99 \\
        --look 2 --splits 40
"""
from __future__ import annotations

import argparse

import numpy as np

from gati.bundle import read_bundle
from gati.pipeline.certify import Costs, calibrate, exit_costs, look_alpha, simulate
from gati.pipeline.optimizer import Problem, optimize
from gati.pipeline.planner import certification_margin
from gati.pipeline.score import scores_from
from gati.runtime.plan import MODES


def random_halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each class's images shuffled and halved: (select, certify) indices."""
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        first.append(idx[:len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


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
    arrays, _ = info.calibration()
    scores = {k: s for k, s in scores_from(arrays).items() if m.profile.times(*k)}
    costs = Costs.of(m.profile, scores)
    nbytes = {(c.cut, c.variant): c.nbytes for c in m.caches}
    alpha = look_alpha(a.look)
    rng = np.random.default_rng(a.seed)
    expected, certified = [], []
    print(f"{a.bundle}: target {a.target}, look {a.look} (alpha {alpha:.4f}), {len(arrays['labels'])} calibration images")
    for split in range(a.splits):
        select, cert = random_halves(arrays["labels"], rng)
        margin = certification_margin(a.target, len(cert), alpha)
        problem = Problem({k: s.subset(select) for k, s in scores.items()}, costs, nbytes, min(a.target + margin, 1.0))
        choice = optimize(problem, MODES)
        entries = [scores[k] for k in choice.keys]
        thresholds, result = calibrate(entries, costs, choice.mode, a.target, select, cert, alpha)
        sim = simulate([e.subset(cert) for e in entries], np.array(thresholds), exit_costs(entries, costs, choice.mode))
        expected.append(m.profile.base_ms / choice.latency_ms)
        certified.append(m.profile.base_ms / sim["latency_ms"])
        print(f"split {split:>3}: {len(choice.keys)} exits; expected on select {expected[-1]:.2f}x at {choice.hit_rate:.1%} "
              f"hits; certified {certified[-1]:.2f}x at {result.hit_rate:.1%} hits, agreement {result.agreement:.4f} "
              f"({result.tested} vectors tested)", flush=True)
    q = np.percentile(certified, [5, 50, 95])
    print(f"expected on select: median {np.median(expected):.2f}x; certified: median {q[1]:.2f}x, "
          f"5th-95th percentile {q[0]:.2f}-{q[2]:.2f}x, min {min(certified):.2f}x, max {max(certified):.2f}x")


if __name__ == "__main__":
    main()
