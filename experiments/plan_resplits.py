"""What planning on one half and certifying on the other leaves of the plan's promise, over random re-splits.

A bundle's plan is chosen, and its threshold path built, on the *select* half of the calibration images; the path
is then certified on the other half, and fixed-sequence testing keeps the last vector before the first that
fails. Over `--splits` random class-balanced re-splits of the stored calibration scores (no pass of the model),
this re-runs exactly that (`gati.pipeline.planner.make_plan`, on those halves, at the given look's alpha) and
prints, per split, the speed-up the plan expected on select and what the certified plan gives on the certify half
(both modelled with the bundle's profile), and the hit rates. The gap between the two is what
the procedure loses to noise on either half: the winner's curse of choosing a plan by its errors on select, and
the fixed-sequence test stopping at the first unlucky vector. It says how typical one bundle's fixed split is.

It also takes each split's procedure apart along the threshold path it certified: the vector the plan's
expectation rests on (the last whose wrong answers on select fit the optimizer's aim, target plus the certification
margin) and its wrong answers on the certify half, and the most aggressive vector of the path that the certify half
would pass on its own (no stop at the first failure), beside the vector certified.

    python experiments/plan_resplits.py --bundle bundles/sweep/vgg16-speechcommands-cpu-t0.99 --target 0.99 \\
        --look 2 --splits 40
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from gati.bundle import read_bundle
from gati.measure.resplit import random_halves
from gati.pipeline.certify import Costs, agreement_lower_bound, exit_costs, max_wrong_for, simulate
from gati.pipeline.planner import CertifyContext, Planned, make_plan
from gati.pipeline.score import scores_from


@dataclass
class AlongPath:
    """One split's threshold path, replayed on both halves; speed-ups on the certify half, modelled over every cache
    the optimizer chose (the caches the path was built over, some of which the plan then drops)."""
    length: int                      # vectors in the certified sequence
    expected_index: int              # the last vector whose wrong answers on select fit the optimizer's aim
    expected_wrong_select: int
    expected_wrong_certify: int
    expected_speedup_certify: float
    certified_index: int             # -1: none passed
    certified_speedup: float
    hindsight_index: int             # the last vector the certify half passes on its own; -1: none
    hindsight_speedup: float


def along_path(planned: Planned, scores, profile, select, cert, target: float) -> AlongPath:
    """Each vector of the plan's threshold sequence replayed on both halves (modelled with `profile`)."""
    keys, sequence, alpha = planned.keys, planned.calibration.sequence, planned.calibration.alpha
    cost = exit_costs([scores[k] for k in keys], Costs.of(profile, keys), planned.plan.mode)
    aim = max_wrong_for(min(target + planned.certified.select_margin, 1.0), len(select))  # what the optimizer aimed at
    on_select = [simulate([scores[k].subset(select) for k in keys], t, cost) for t in sequence]
    on_cert = [simulate([scores[k].subset(cert) for k in keys], t, cost) for t in sequence]
    expected = max([i for i, r in enumerate(on_select) if r["wrong"] <= aim], default=0)
    passes = [i for i, r in enumerate(on_cert) if agreement_lower_bound(len(cert), r["wrong"], alpha) >= target]
    hindsight = max(passes, default=-1)
    certified = len(planned.calibration.passed) - 1

    def speedup(i: int) -> float:
        return profile.base_ms / on_cert[i]["latency_ms"] if i >= 0 else 1.0
    return AlongPath(len(sequence), expected, on_select[expected]["wrong"], on_cert[expected]["wrong"], speedup(expected),
                     certified, speedup(certified), hindsight, speedup(hindsight))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--look", type=int, default=1, help="the look whose alpha to test at (the bundle's own: its ledger)")
    p.add_argument("--splits", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile-of", help="model latencies with this bundle's profile instead (the same model and "
                                        "cache variants): two bundles' scores then compare on equal costs")
    a = p.parse_args()
    info = read_bundle(a.bundle)
    m = info.manifest
    if a.profile_of:
        m.profile = read_bundle(a.profile_of).manifest.profile
    arrays, ids = info.calibration()
    scores = scores_from(arrays)
    nbytes = {(c.cut, c.variant): c.nbytes for c in m.caches}
    context = CertifyContext("resplit", a.look, m.dataset, m.calibration.split, m.certified.scored_on, m.profile.device)
    rng = np.random.default_rng(a.seed)
    expected, certified, undercount, sequence_cost = [], [], [], []
    print(f"{a.bundle}: target {a.target}, look {a.look}, {len(ids)} calibration images"
          + (f"; latencies from {a.profile_of}'s profile" if a.profile_of else ""))
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
        path = along_path(planned, scores, m.profile, select, cert, a.target)
        undercount.append(path.expected_wrong_certify / max(path.expected_wrong_select, 1))
        sequence_cost.append(path.hindsight_speedup / path.certified_speedup)
        print(f"           path: the expected vector ({path.expected_index + 1} of {path.length}) made "
              f"{path.expected_wrong_select} wrong on select, {path.expected_wrong_certify} on certify "
              f"({path.expected_speedup_certify:.2f}x there); certified vector {path.certified_index + 1}; the most "
              f"aggressive that certify passes on its own: {path.hindsight_index + 1} ({path.hindsight_speedup:.2f}x)",
              flush=True)
    q = np.percentile(certified, [5, 50, 95])
    print(f"expected on select: median {np.median(expected):.2f}x; certified: median {q[1]:.2f}x, "
          f"5th-95th percentile {q[0]:.2f}-{q[2]:.2f}x, min {min(certified):.2f}x, max {max(certified):.2f}x")
    print(f"the expected vector's wrong answers, certify over select: median {np.median(undercount):.2f}x "
          f"({min(undercount):.2f}-{max(undercount):.2f}); what stopping at the first failure cost: median "
          f"{np.median(sequence_cost) - 1:.1%}, at most {max(sequence_cost) - 1:.1%}")


if __name__ == "__main__":
    main()
