"""Models with inputs of their own, end to end: a greyscale 20x14 image folder through `gati build` and `gati eval`,
the user's preprocessing recorded in the manifest, bundles from before sizes were recorded, and bundles built from
checkpoints in every common layout."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import yaml

from gati.bundle import load_bundle, read_bundle, read_manifest
from gati.cli import main
from gati.data import preprocess_for
from gati.pipeline.build import BuildConfig, build
from gati.preprocess import Preprocess
from tests.checkpoint_layouts import LAYOUTS, assert_same_weights
from tests.tinynet import CUTS, TinyNet, train_tiny, write_folder


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> tuple:
    """A 4-class greyscale folder of 20x14 (HxW) images and a TinyNet trained on it."""
    root = tmp_path_factory.mktemp("grey")
    data = write_folder(root / "data", train_per_class=60, test_per_class=60, size=(20, 14), channels=1)
    return data, train_tiny(data, root / "grey.pt", channels=1)


def _build_args(data, checkpoint, out, *extra: str) -> list[str]:
    return ["build", "--model-module", "tests.tinynet:grey_factory", "--cuts", ",".join(CUTS),
            "--checkpoint", str(checkpoint), "--dataset", "imagefolder", "--data-dir", str(data), "--target", "0.9",
            "--variants", "linear,mlp", "--train-limit", "0", "--out", str(out), *extra]


def _eval(bundle, data, capsys) -> dict:
    assert main(["eval", "--bundle", str(bundle), "--data-dir", str(data), "--split", "test:eval", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_greyscale_odd_size_folder_builds_and_evaluates(grey, tmp_path, capsys):
    data, checkpoint = grey
    assert main(_build_args(data, checkpoint, tmp_path / "b")) == 0
    manifest = read_manifest(tmp_path / "b")
    assert manifest.preprocess == preprocess_for("imagefolder", data)
    assert manifest.preprocess.channels == 1 and manifest.preprocess.size == (20, 14)
    assert manifest.input_shape == (1, 20, 14)
    capsys.readouterr()
    result = _eval(tmp_path / "b", data, capsys)
    assert result["requests"] == 4 * 30
    assert result["base_acc"] > 0.5 and result["agreement"] >= 0.8


def test_the_users_preprocessing_goes_into_the_manifest_and_serving_resizes_to_it(grey, tmp_path, capsys):
    data, checkpoint = grey
    assert main(_build_args(data, checkpoint, tmp_path / "b", "--mean", "0.5", "--std", "0.25",
                            "--input-size", "24x16", "--channels", "1")) == 0
    expected = Preprocess((0.5,), (0.25,), (24, 16))
    assert read_manifest(tmp_path / "b").preprocess == expected
    bundle = load_bundle(tmp_path / "b")
    assert bundle.preprocess == expected and bundle.input_shape == (1, 24, 16)
    capsys.readouterr()
    assert _eval(tmp_path / "b", data, capsys)["requests"] == 4 * 30


def test_bad_preprocessing_flags_are_refused_with_a_message(grey, tmp_path, capsys):
    data, checkpoint = grey
    for flags, message in ((["--mean", "0.5"], "both the mean and the std"),
                           (["--mean", "0.5", "--std", "0.25", "--channels", "3"], "1 mean values given for 3"),
                           (["--mean", "0.5,0.5", "--std", "0.25,0.25"], "for 1 or 3 channels")):
        assert main(_build_args(data, checkpoint, tmp_path / "b", *flags)) == 1  # a typed error, not a crash
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_build_args(data, checkpoint, tmp_path / "b", "--input-size", "24by16"))
    assert "expected HxW" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_bundle_from_before_sizes_were_recorded_loads_as_32x32_rgb(tiny_bundle, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tiny_bundle, copy)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    new = Preprocess.from_dict(manifest["preprocess"])
    manifest["preprocess"] = {"mean": list(new.mean), "std": list(new.std)}
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    old = load_bundle(copy)
    assert old.preprocess == new and old.input_shape == (3, 32, 32)
    assert read_bundle(copy).manifest.preprocess == new  # what the serving roles read


@pytest.fixture(scope="module")
def tiny_model(tiny_data) -> TinyNet:
    model = TinyNet(4)
    model.load_state_dict(torch.load(tiny_data[1], weights_only=True))
    return model


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_bundle_builds_from_a_checkpoint_in_every_common_layout(layout, tiny_data, tiny_model, tmp_path, caplog):
    """The model is defined outside the package (tests/tinynet.py); its checkpoint is saved as training scripts do."""
    data, _ = tiny_data
    make, unwrapped = LAYOUTS[layout]
    torch.save(make(tiny_model), tmp_path / "ckpt.pt")
    with caplog.at_level(logging.INFO, logger="gati.models.checkpoint"):
        build(BuildConfig(checkpoint=tmp_path / "ckpt.pt", dataset="imagefolder", data_dir=data, out=tmp_path / "b",
                          model_module="tests.tinynet:factory", cuts=CUTS, target=0.9, variants=["linear"],
                          train_limit=80, calib_limit=120))
    assert all(any(said in r.getMessage() for r in caplog.records) for said in unwrapped)
    assert_same_weights(load_bundle(tmp_path / "b").model, tiny_model)
