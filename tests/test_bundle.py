"""Bundles: complete or absent, never half-written; clear errors for every way they go wrong."""
import json
import shutil

import pytest
import torch
import yaml

from gati.bundle import load_bundle, read_bundle, read_manifest, write_bundle
from gati.cli import main
from gati.errors import BundleError, CheckpointError
from tests.legacy import as_format_1


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_manifest_records_what_serving_and_auditing_need(tiny_bundle):
    m = read_manifest(tiny_bundle)
    assert m.format_version == 2 and m.checkpoint.path == "checkpoint.pt" and len(m.checkpoint.sha256) == 64
    assert (tiny_bundle / "checkpoint.pt").is_file()
    assert m.calibration.split == "test:calib" and len(m.calibration.ids_sha256) == 64
    assert m.profile.device == "cpu" and len(m.profile.stage_ms) == len(m.cuts) + 1
    assert m.classes and m.plan.entries and m.target == 0.9 and m.versions["torch"]
    assert read_manifest(tiny_bundle).to_yaml() == (tiny_bundle / "manifest.yaml").read_text()  # round trip


def test_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="manifest.yaml is missing"):
        load_bundle(tmp_path)


def test_corrupt_manifest(copy):
    (copy / "manifest.yaml").write_text("plan: [unclosed")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(copy)


def test_missing_cache_file(copy):
    for f in (copy / "caches").iterdir():
        f.unlink()
    with pytest.raises(BundleError):
        load_bundle(copy)


def test_checkpoint_changed_since_build(copy):
    state = torch.load(copy / "checkpoint.pt")
    state["linear.bias"] += 1
    (copy / "checkpoint.pt").unlink()  # a new file: the original bundle's (hard-linked) one stays intact
    torch.save(state, copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="changed since the bundle was built"):
        load_bundle(copy)


def test_a_moved_bundle_still_evaluates(tiny_bundle, tiny_data, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(tiny_bundle, moved)  # what cp -r or scp does
    assert main(["eval", "--bundle", str(moved), "--data-dir", str(tiny_data[0]), "--limit", "40", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 40


def test_an_old_bundle_loads_where_its_checkpoint_is_and_says_what_to_do_where_not(copy, tmp_path):
    raw = yaml.safe_load((copy / "manifest.yaml").read_text())
    outside = tmp_path / "models" / "tiny.pt"
    outside.parent.mkdir()
    shutil.move(copy / "checkpoint.pt", outside)
    raw = as_format_1(raw, str(outside))
    (copy / "manifest.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    old = load_bundle(copy)
    assert old.plan.entries and old.manifest.certified.claim == "agreement with the base model >= 0.9"
    retargeted = tmp_path / "retargeted"  # revising an old bundle writes this gati's format, and reads back
    main(["calibrate", "--bundle", str(copy), "--target", "0.95", "--out", str(retargeted)])
    assert read_manifest(retargeted).format_version == 2 and load_bundle(retargeted).manifest.target == 0.95
    outside.unlink()
    with pytest.raises(CheckpointError, match="older gati .* absolute path"):
        load_bundle(copy)


def test_a_manifest_with_unknown_or_missing_keys_is_refused(copy):
    raw = yaml.safe_load((copy / "manifest.yaml").read_text())
    raw["certified"]["nominal_lower_boundd"] = raw["certified"].pop("nominal_lower_bound")
    (copy / "manifest.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(BundleError, match="nominal_lower_boundd"):
        read_bundle(copy)


def test_an_interrupted_write_leaves_nothing_behind(tiny_bundle, tmp_path):
    class Exploding:
        def save(self, path):
            raise RuntimeError("disk full")
    m = read_manifest(tiny_bundle)
    with pytest.raises(RuntimeError):
        write_bundle(tmp_path / "b", m, {(0, "linear"): Exploding()}, {}, [], tiny_bundle / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_not_overwritten_without_force(copy):
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(copy, read_manifest(copy), {}, {}, [], copy / "checkpoint.pt")


def test_eval_json_is_one_object_with_the_promised_fields(tiny_bundle, tiny_data, capsys):
    assert main(["eval", "--bundle", str(tiny_bundle), "--data-dir", str(tiny_data[0]), "--split", "test:eval",
                 "--limit", "80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("requests", "base_acc", "gati_acc", "agreement", "hit_rate", "hits_per_layer", "mean_ms_base",
                "mean_ms_gati", "p50_ms_base", "p50_ms_gati", "p99_ms_base", "p99_ms_gati", "speedup_mean",
                "speedup_p50", "target", "device"):
        assert key in out
    assert out["requests"] == 80
    env = out["environment"]  # the machine and versions the numbers came from
    assert env["torch_threads"] >= 1 and env["cpus"] >= 1 and env["torch"] and env["python"]
    assert out["speedup_mean"] == pytest.approx(out["mean_ms_base"] / out["mean_ms_gati"])
    assert sum(out["hits_per_layer"].values()) == round(out["hit_rate"] * 80)


def test_eval_refuses_the_calibration_split(tiny_bundle, tiny_data, capsys):
    assert main(["eval", "--bundle", str(tiny_bundle), "--data-dir", str(tiny_data[0]),
                 "--split", "test:calib", "--limit", "20"]) == 1  # a runtime failure, not a usage error
    assert "calibration" in capsys.readouterr().err


def test_calibrate_retargets_without_retraining(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "strict"
    assert main(["calibrate", "--bundle", str(tiny_bundle), "--target", "0.97", "--out", str(out)]) == 0
    loose, strict = read_manifest(tiny_bundle), read_manifest(out)
    assert strict.target == 0.97 and loose.target == 0.9
    assert strict.certified.claim.endswith(">= 0.97") or not strict.plan.entries
    assert strict.certified.hit_rate <= loose.certified.hit_rate
    # the second look at the same certify images spends a smaller share of the error budget
    assert [look.command for look in strict.looks] == ["build", "calibrate"] and strict.certified.look == 2
    assert strict.certified.alpha < loose.certified.alpha and sum(look.alpha for look in strict.looks) < 0.05
    assert sorted(p.name for p in (out / "caches").iterdir()) == sorted(p.name for p in (tiny_bundle / "caches").iterdir())


def test_plan_reprofiles_on_a_device(tiny_bundle, tmp_path):
    out = tmp_path / "replanned"
    assert main(["plan", "--bundle", str(tiny_bundle), "--device", "cpu", "--out", str(out)]) == 0
    m = read_manifest(out)
    assert m.profile.device == "cpu" and m.target == 0.9 and [look.command for look in m.looks] == ["build", "plan"]
    assert load_bundle(out).plan.entries


def test_extract_fills_every_row_whatever_the_batch(tiny_bundle, tiny_data):
    """Batched extraction (a last batch shorter than the others included) equals one image at a time."""
    from gati.data import load_split
    from gati.pipeline.extract import extract, extraction_batch

    bundle = load_bundle(tiny_bundle)
    data = load_split("imagefolder", tiny_data[0], "test:eval", limit=23)
    wanted = {0: {"linear": "gap"}, 2: {"mlp": "gapmax", "fc": "pool4"}}
    feats, logits = extract(bundle.staged, data, bundle.preprocess, wanted, "cpu", 5, "calib")
    one_feats, one_logits = extract(bundle.staged, data, bundle.preprocess, wanted, "cpu", 1, "calib")
    assert set(feats) == {(0, "gap"), (2, "gapmax"), (2, "pool4")}
    assert logits.shape == (23, 4) and torch.allclose(logits, one_logits, atol=1e-5)
    for key, value in feats.items():
        assert len(value) == 23 and torch.allclose(value, one_feats[key], atol=1e-5)
    train_feats, _ = extract(bundle.staged, data, bundle.preprocess, wanted, "cpu", 5, "train")
    assert train_feats[(0, "gap")].dtype == torch.float16  # training features are stored at half size
    assert extraction_batch("cpu") < extraction_batch("cuda:0")


def test_cache_quality_per_cut_reads_every_stored_cache(tiny_bundle):
    """experiments/cache_quality.py: agreement with the base model per cut and variant, from calibration.npz."""
    from experiments.cache_quality import cache_quality
    from gati.bundle import read_bundle
    info = read_bundle(tiny_bundle)
    arrays, ids = info.calibration()
    q = cache_quality(str(tiny_bundle))
    assert q["images"] == len(ids) == len(arrays["base"])
    per_cut = q["agreement_per_cut"]
    assert per_cut and all(0.0 <= a <= 1.0 for variants in per_cut.values() for a in variants.values())
    for name, best in q["best_per_cut"].items():
        assert best["agreement"] == max(per_cut[name].values()) and per_cut[name][best["variant"]] == best["agreement"]
    assert {(c.cut_name, c.variant) for c in info.manifest.caches} == {
        (name, v) for name, variants in per_cut.items() for v in variants}
