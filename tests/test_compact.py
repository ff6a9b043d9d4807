"""`gati compact` on the tiny model: bfloat16 caches, re-scored, re-planned, re-certified."""
import numpy as np
import pytest
from PIL import Image

from gati.bundle import load_bundle, read_bundle
from gati.data import load_split
from gati.errors import BundleError, DatasetError
from gati.pipeline.compact import compact
from gati.runtime.engine import Engine


@pytest.fixture(scope="module")
def compacted(tiny_bundle, tiny_data, tmp_path_factory):
    return compact(tiny_bundle, tiny_data[0], tmp_path_factory.mktemp("compact") / "tiny-bf16")


def test_dense_caches_halve_and_calibration_is_redone(tiny_bundle, compacted):
    before, after = read_bundle(tiny_bundle), read_bundle(compacted)
    assert after.manifest.cache_dtype == "bfloat16"
    assert [p.name for p in compacted.parent.iterdir()] == [compacted.name]  # no temporary copy left
    sizes = {(c.cut, c.variant): c.nbytes for c in before.manifest.caches}
    for c in after.manifest.caches:
        assert c.nbytes == sizes[(c.cut, c.variant)] // (2 if c.variant != "knn" else 1)
    old, old_ids = before.calibration()
    new, new_ids = after.calibration()
    assert new_ids == old_ids and np.array_equal(new["base"], old["base"])
    m = after.manifest
    assert m.certified.claim.endswith(f">= {m.target}") or not m.plan.entries
    assert [look.command for look in m.looks] == ["build", "compact"] and "bfloat16" in m.certified.scored_on


def test_the_compacted_bundle_serves_and_misses_are_exact(compacted, tiny_data):
    bundle = load_bundle(compacted)
    engine = Engine(bundle)
    data = load_split("imagefolder", tiny_data[0], "test:eval")
    for i in range(40):
        x = bundle.preprocess(data.images[i:i + 1])
        answer = engine.predict(x)
        if answer.exit_cut is None:
            assert answer.label == engine.predict_base(x)


def test_missing_or_different_calibration_images_are_refused(tiny_bundle, tmp_path):
    from tests.tinynet import write_folder
    fewer = write_folder(tmp_path / "fewer", train_per_class=2, test_per_class=10)
    with pytest.raises(DatasetError, match="not in"):
        compact(tiny_bundle, fewer, tmp_path / "out1")
    other = write_folder(tmp_path / "other", train_per_class=2)  # same names, then noise for pixels
    rng = np.random.default_rng(7)
    for png in (other / "test").rglob("*.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png)
    with pytest.raises(BundleError, match="differently"):
        compact(tiny_bundle, other, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
