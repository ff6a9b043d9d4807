"""The bundle each row needs: reused when it exists, otherwise made with the `gati` commands a user would type.

Per model and device one bundle is built with `gati build`'s defaults (plus the model, the data and the preset's
build target; never hand-picked flags), unless the preset names build options of its own (`build:`, stated in its
description and in every command it records; those bundles get folders of their own); every other target is `gati calibrate` of it (re-planned and re-certified
from the stored calibration scores, as the README's step 3 does). A model whose YAML entry names an existing
bundle reuses it, re-planned for another device with `gati plan`. A missing checkpoint is trained with `gati
train-base` where a GPU is present. Every command runs as a subprocess (the CLI's defaults, exactly) and is
recorded beside the bundle, so results name the commands that made them even when a later run reuses it.

What cannot be made is not an error: `Unavailable` carries the reason and the command that would make it possible.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.sweep.spec import Build, ModelSpec, SweepError
from gati.bundle import read_manifest
from gati.errors import GatiError

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Ready:
    path: Path
    commands: tuple[str, ...]          # the `gati` commands that made it, in order


@dataclass(frozen=True)
class Unavailable:
    reason: str
    command: str                       # what would make it possible


class Bundles:
    """Finds or makes the bundle of every (model, device, target), under one work folder."""

    def __init__(self, shared: Path, work: Path, build_target: float, cuda: bool, sweep_command: str,
                 build: Build = Build(), preset: str = ""):
        self.shared, self.work, self.build_target = shared, work, build_target
        self.cuda, self.sweep_command = cuda, sweep_command
        self.build = build
        # a preset's own build options make bundles of its own: they must never stand in for a default build
        self.suffix = "" if build.defaults else f"-{preset}"

    def get(self, spec: ModelSpec, device: str, target: float) -> Ready | Unavailable:
        if device.startswith("cuda") and not self.cuda:
            return Unavailable("no CUDA device on this machine", f"{self.sweep_command}  # on a machine with a GPU")
        data = self.shared_path(spec.data)
        if not data.exists():
            return Unavailable(f"no data at {show(data)}", f"place {Path(spec.data).name} at {show(data)} "
                                                           "(see ../shared/README.md), or pass --shared")
        base = self._base(spec, device, data)
        if isinstance(base, Unavailable):
            return base
        if abs(read_manifest(base.path).target - target) < 1e-9:
            ready = base
        else:
            out = self.work / f"{spec.name}-{device}{self.suffix}-t{target:g}"
            command = ["calibrate", "--bundle", str(base.path), "--target", f"{target:g}", "--out", str(out)]
            ready = self._made(out, [command], base.commands)
        check_bundle(ready.path, spec, target)
        return ready

    def shared_path(self, relative: str) -> Path:
        return Path(relative) if Path(relative).is_absolute() else self.shared / relative

    def _base(self, spec: ModelSpec, device: str, data: Path) -> Ready | Unavailable:
        """The model's bundle at the build target, profiled and planned on `device`."""
        out = self.work / f"{spec.name}-{device}{self.suffix}"
        if spec.bundle:
            given = (REPO / spec.bundle).resolve()
            if not (given / "manifest.yaml").is_file():
                return Unavailable(f"the bundle {spec.bundle} named for {spec.name} does not exist",
                                   _display(_build_args(spec, self.shared_path(spec.checkpoint), data,
                                                        self.build_target, device, given, self.build)))
            if read_manifest(given).profile.device.split(":")[0] == device:
                return Ready(given, (f"(given: {show(given)})",))
            return self._made(out, [["plan", "--bundle", str(given), "--device", device, "--out", str(out)]],
                              (f"(given: {show(given)})",))
        checkpoint = self._checkpoint(spec)
        steps = []
        if not checkpoint.is_file() and not (out / "manifest.yaml").is_file():
            if not (spec.train_if_missing and spec.arch):
                return Unavailable(f"no checkpoint at {show(checkpoint)}", f"place the trained model's state_dict "
                                                                          f"at {show(checkpoint)}")
            train = ["train-base", "--arch", spec.arch, "--dataset", spec.dataset, "--data-dir", str(data),
                     "--out", str(checkpoint), "--device", "cuda", "--yes"]
            if not self.cuda:
                return Unavailable(f"no checkpoint for {spec.title} and no GPU to train one (`gati train-base` "
                                   "prints its estimate for this CPU: far too long)", _display(train) + "  # on a GPU")
            steps.append(train)
        steps.append(_build_args(spec, checkpoint, data, self.build_target, device, out, self.build))
        return self._made(out, steps, ())

    def _checkpoint(self, spec: ModelSpec) -> Path:
        """The shared checkpoint, else one the sweep trained into its work folder (which may not exist yet)."""
        shared = self.shared_path(spec.checkpoint)
        return shared if shared.is_file() else self.work / "checkpoints" / Path(spec.checkpoint).name

    def _made(self, out: Path, steps: list[list[str]], before: tuple[str, ...]) -> Ready:
        """`out`, reused when it exists (with the commands recorded when it was made), else made by `steps`."""
        record = out.with_name(out.name + ".commands")
        if (out / "manifest.yaml").is_file():
            made = tuple(record.read_text().splitlines()) if record.is_file() else (f"(found: {show(out)})",)
            return Ready(out, made)
        done = []
        for args in steps:
            run_gati(args, self.work / "logs" / f"{out.name}-{args[0]}.log")
            done.append(_display(args))
        commands = (*before, *done)
        record.write_text("\n".join(commands) + "\n")
        return Ready(out, commands)


def _build_args(spec: ModelSpec, checkpoint: Path, data: Path, target: float, device: str, out: Path,
                build: Build = Build()) -> list[str]:
    model = ["--arch", spec.arch] if spec.arch else ["--model-module", spec.model_module or "",
                                                      "--cuts", ",".join(spec.cuts)]
    return ["build", *model, "--checkpoint", str(checkpoint), "--dataset", spec.dataset, "--data-dir", str(data),
            "--target", f"{target:g}", "--device", device, *build.args, "--out", str(out)]


def run_gati(args: list[str], log: Path) -> None:
    """`gati ARGS` in a subprocess of this checkout, its output in `log`; a failure names the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "gati.cli", *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise GatiError(f"`{_display(args)}` failed (exit {done.returncode}); last lines of {log}:\n{tail}")


def _display(args: list[str]) -> str:
    """The command as a user types it: `gati ...`, paths relative to the checkout where that is shorter."""
    return shlex.join(["gati", *(show(Path(a)) if os.sep in a else a for a in args)])


def show(path: Path) -> str:
    """A path as the docs print it: relative to the checkout (e.g. ../shared/data), absolute if that is shorter."""
    absolute = Path(os.path.abspath(path))
    relative = os.path.relpath(absolute, REPO)
    return relative if len(relative) <= len(str(absolute)) else str(absolute)


def check_bundle(path: Path, spec: ModelSpec, target: float) -> None:
    """A reused bundle must be the model's, at the row's target: else the row would measure something else."""
    m = read_manifest(path)
    model = m.arch or m.model_module
    if model != (spec.arch or spec.model_module) or m.dataset != spec.dataset or abs(m.target - target) > 1e-9:
        raise SweepError(f"{show(path)} holds {model} on {m.dataset} at {m.target:g}, but the row wants "
                         f"{spec.arch or spec.model_module} on {spec.dataset} at {target:g}: move it away or "
                         "choose another --work folder")
