"""Where the latency model and a replay part ways: per exit, the time the build's model expects and the time
measured.

`gati build` chooses a plan on a latency model: a request that exits at a planned cut costs the profiled stages
up to it plus the lookups paid on the way (`gati.pipeline.certify.exit_costs`), and the unsplit model costs the
profile's `base_ms`. A replay (`gati eval`, the latency sweep) measures what each request actually took and where
it exited. Grouping the replay's requests by exit puts the two side by side: which exits the model gets wrong,
and whether the gap is in GATI's path or in the unsplit model's time (the denominator of every speed-up).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gati.bundle.manifest import Manifest
from gati.pipeline.certify import Costs, Scores, exit_costs

FINAL = "final"  # the exit name of a request the full model answered


@dataclass
class ExitTimes:
    exit_name: str
    share: float         # of the replay's requests
    modelled_ms: float   # what the build's latency model expects of a request exiting here
    measured_ms: float   # mean measured time of the replay's requests exiting here

    @property
    def error(self) -> float:
        """Model over measurement, minus one: negative when the model is optimistic."""
        return self.modelled_ms / self.measured_ms - 1.0


@dataclass
class ModelCheck:
    exits: list[ExitTimes]
    modelled_base_ms: float   # the profile's unsplit model
    measured_base_ms: float   # the replay's unsplit model, mean
    modelled_ms: float        # the latency model at the replay's own exit shares
    measured_ms: float        # the replay's GATI, mean

    @property
    def modelled_speedup(self) -> float:
        return self.modelled_base_ms / self.modelled_ms

    @property
    def measured_speedup(self) -> float:
        return self.measured_base_ms / self.measured_ms


def modelled_exit_ms(manifest: Manifest) -> dict[str, float]:
    """The latency model's cost of exiting at each planned cut, and at the end (`final`)."""
    p, plan = manifest.profile, manifest.plan
    keys = [(e.cut, e.variant) for e in plan.entries]
    costs = Costs.of(p, keys)
    placeholders = [Scores(cut, variant, np.zeros(0), np.zeros(0, dtype=bool)) for cut, variant in keys]
    cost = exit_costs(placeholders, costs, plan.mode)
    return {**{e.cut_name: float(c) for e, c in zip(plan.entries, cost)}, FINAL: float(cost[-1])}


def check_model(manifest: Manifest, exit_name: np.ndarray, ms_gati: np.ndarray, ms_base: np.ndarray) -> ModelCheck:
    """The replay (per request: where it exited, GATI's and the unsplit model's time) against the model."""
    modelled = modelled_exit_ms(manifest)
    unknown = set(exit_name.tolist()) - set(modelled)
    if unknown:
        raise ValueError(f"the replay exited at {sorted(unknown)}, which this bundle's plan does not have")
    exits = [ExitTimes(name, float((exit_name == name).mean()), cost, float(ms_gati[exit_name == name].mean()))
             for name, cost in modelled.items() if (exit_name == name).any()]
    return ModelCheck(exits, manifest.profile.base_ms, float(ms_base.mean()),
                      sum(e.share * e.modelled_ms for e in exits), float(ms_gati.mean()))
