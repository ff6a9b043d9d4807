"""What the instances install: a wheel of the checked-out project and the bundle as one archive."""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from gati.bundle import MANIFEST, read_manifest
from gati.errors import BundleError, GatiError


def build_wheel(project_dir: Path, out_dir: Path) -> Path:
    """`pip wheel --no-deps` of the project; the wheel's dependencies come from PyPI on the
    instance. Uses this environment's setuptools when it has one, so no download is needed."""
    if not (project_dir / "setup.py").is_file() and not (project_dir / "pyproject.toml").is_file():
        raise GatiError(f"{project_dir} is not the GATI project checkout (no setup.py)")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    result = subprocess.run([*cmd, str(project_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        raise GatiError(f"building the wheel failed:\n{result.stderr[-2000:]}")
    wheels = sorted(out_dir.glob("gati-*.whl"))
    if len(wheels) != 1:
        raise GatiError(f"expected one gati wheel in {out_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def pack_bundle(bundle_dir: Path, out_path: Path, remote_dir: str) -> Path:
    """The bundle folder as a .tar.gz, unpacked on the instance into `remote_dir`.

    A bundle names its checkpoint by an absolute path on the machine that built it; that file
    travels inside the archive (checkpoint/<name>) and the archive's manifest points at its
    place under `remote_dir`. The local bundle is left as it is.
    """
    manifest = read_manifest(bundle_dir)
    checkpoint = manifest["checkpoint"].get("path")
    with tarfile.open(out_path, "w:gz") as tar:
        for child in sorted(bundle_dir.iterdir()):
            if child.name != MANIFEST:
                tar.add(child, arcname=child.name)
        if checkpoint:
            shipped = _add_checkpoint(tar, bundle_dir, Path(checkpoint))
            manifest["checkpoint"]["path"] = f"{remote_dir}/{shipped}"
        _add_text(tar, MANIFEST, yaml.safe_dump(manifest, sort_keys=False))
    return out_path


def _add_checkpoint(tar: tarfile.TarFile, bundle_dir: Path, checkpoint: Path) -> str:
    source = checkpoint if checkpoint.is_absolute() else bundle_dir / checkpoint
    if not source.is_file():
        raise BundleError(f"the bundle's checkpoint {checkpoint} is not on this machine, so it "
                          "cannot be shipped with the bundle")
    if source.resolve().is_relative_to(bundle_dir.resolve()):
        return source.resolve().relative_to(bundle_dir.resolve()).as_posix()
    name = f"checkpoint/{source.name}"
    tar.add(source, arcname=name)
    return name


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
