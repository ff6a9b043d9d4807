"""The Python API: load a bundle and predict in a few lines, with any usual image form."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from PIL import Image

import gati
from gati.data import load_split
from gati.runtime.engine import Engine

REPO = Path(__file__).resolve().parents[1]


def test_load_and_predict_from_a_file_bytes_a_pil_image_or_pixels(tiny_bundle, tiny_data, tmp_path):
    images = load_split("imagefolder", tiny_data[0], "test:eval", limit=8).images
    with gati.load(tiny_bundle) as model:
        engine = Engine(model.bundle)
        for i, pixels in enumerate(images):
            want = engine.predict(model.bundle.preprocess(pixels[None]))
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
            for given in (str(tmp_path / f"{i}.png"), buf.getvalue(), Image.fromarray(pixels), pixels):
                p = model.predict(given)
                assert (p.label, p.exit_name, p.stages_run) == (want.label, want.exit_name, want.stages_run)
                assert p.class_name == model.classes[p.label] and 0 < p.confidence <= 1


def test_import_gati_stays_light():
    out = subprocess.run([sys.executable, "-c", "import sys, gati; print('torch' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
