"""What the instances install: a wheel of the checked-out project and the bundle as one archive."""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

from gati.bundle import MANIFEST, read_bundle
from gati.bundle.layout import CHECKPOINT
from gati.errors import GatiError


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


def pack_bundle(bundle_dir: Path, out_path: Path) -> Path:
    """The bundle folder as a .tar.gz, unpacked as it is on the instance (bundles are self-contained).

    A format-1 bundle names its checkpoint by an absolute path on the machine that built it: that
    file travels inside the archive as `checkpoint.pt` and the archive's manifest points at it, as a
    format-2 bundle's does. The local bundle is left as it is.
    """
    info = read_bundle(bundle_dir)
    checkpoint = info.checkpoint_path()  # CheckpointError when it is not on this machine
    with tarfile.open(out_path, "w:gz") as tar:
        for child in sorted(Path(bundle_dir).iterdir()):
            if child.name != MANIFEST:
                tar.add(child, arcname=child.name)
        ref = info.manifest.checkpoint
        if Path(ref.path).is_absolute():
            tar.add(checkpoint, arcname=CHECKPOINT)
            shipped = info.manifest.replace(checkpoint=replace(ref, path=CHECKPOINT, source=ref.path))
            _add_text(tar, MANIFEST, shipped.to_yaml())
        else:
            tar.add(Path(bundle_dir) / MANIFEST, arcname=MANIFEST)
    return out_path


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
