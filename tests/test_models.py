"""Architectures, cut points and checkpoint loading, checked against the shared CIFAR-10 and Speech Commands
checkpoints; checkpoints in the layouts training scripts save."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from gati.data import load_split, preprocess_for
from gati.errors import CheckpointError, GatiError
from gati.models import ARCHS, build_model, default_cuts, load_checkpoint, sha256_file
from tests.checkpoint_layouts import LAYOUTS, assert_same_weights


@pytest.fixture(scope="module")
def checkpoints(shared_dir):
    return {arch: shared_dir / "models" / f"cifar10_{arch}.pt" for arch in ("resnet18", "resnet50")}


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_cuts_exist(arch):
    model = build_model(arch, num_classes=7).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()
    modules = dict(model.named_modules())
    cuts = default_cuts(arch)
    assert cuts and all(c in modules for c in cuts)
    # Cuts are in forward order, i.e. the order the modules are registered in.
    order = list(modules)
    assert [order.index(c) for c in cuts] == sorted(order.index(c) for c in cuts)


def test_default_cuts_resnet():
    assert default_cuts("resnet18") == ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                                        "layer3.1", "layer4.0", "layer4.1"]
    assert len(default_cuts("resnet50")) == 17
    assert len(default_cuts("resnet152")) == 1 + 3 + 8 + 36 + 3
    assert len(default_cuts("vgg16")) == 13


def test_stem_relu_is_a_module_without_parameters():
    model = build_model("resnet18")
    assert isinstance(model.relu, torch.nn.ReLU)
    assert not any(k.startswith("relu") for k in model.state_dict())


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(GatiError, match="resnet18.*vgg16"):
        build_model("resnet19")
    with pytest.raises(GatiError, match="known"):
        default_cuts("alexnet")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_keys_match_and_strict_load(arch, checkpoints):
    state = torch.load(checkpoints[arch], map_location="cpu")
    model = build_model(arch)
    assert list(model.state_dict()) == list(state)
    digest = load_checkpoint(model, checkpoints[arch])
    assert digest == sha256_file(checkpoints[arch]) and len(digest) == 64
    # float16 in the file, float32 in the model, values equal after the cast.
    assert state["linear.weight"].dtype == torch.float16
    assert model.linear.weight.dtype == torch.float32
    assert torch.equal(model.linear.weight, state["linear.weight"].float())


def test_arch_mismatch_names_path_problem_and_the_fitting_arch(checkpoints):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_model("resnet50"), checkpoints["resnet18"])
    msg = str(err.value)
    assert str(checkpoints["resnet18"]) in msg
    assert "missing keys: layer1.0.conv3.weight" in msg
    assert "shape mismatch for linear.weight: checkpoint (10, 512) vs model (10, 2048)" in msg
    assert "build_model('resnet18', num_classes=10)" in msg


def test_class_count_mismatch_suggests_the_right_count(checkpoints):
    with pytest.raises(CheckpointError, match=r"fits build_model\('resnet18', num_classes=10\)"):
        load_checkpoint(build_model("resnet18", num_classes=100), checkpoints["resnet18"])


def test_fp16_state_dict_is_cast_and_loaded(tmp_path):
    source = build_model("vgg16", num_classes=3)
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "vgg.pt"
    torch.save(half, path)
    target = build_model("vgg16", num_classes=3)
    load_checkpoint(target, path)
    for k, v in target.state_dict().items():
        assert v.dtype == source.state_dict()[k].dtype
        assert torch.equal(v, half[k].to(v.dtype))


def test_bad_files_raise_checkpoint_error(tmp_path):
    model = build_model("resnet18")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(model, junk)
    unknown = tmp_path / "unknown.pt"
    torch.save({"epoch": 3, "weights": model.state_dict()}, unknown)
    with pytest.raises(CheckpointError, match=r"holds no state_dict of tensors \(found \['epoch', 'weights'\]\).*"
                                              "under 'state_dict' or 'model_state_dict' or 'model'"):
        load_checkpoint(model, unknown)
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(model, whole)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k != "bn1.bias"} | {"extra": torch.zeros(1)},
               partial)
    with pytest.raises(CheckpointError, match="missing keys: bn1.bias.*unexpected keys: extra"):
        load_checkpoint(model, partial)


def test_resnet18_checkpoint_accuracy_on_unseen_images(shared_dir, checkpoints):
    """A correct loader and preprocessing reproduce ~92% on test:eval; 200 images keep it fast (>= 0.85)."""
    data_dir = shared_dir / "data"
    ds = load_split("cifar10", data_dir, "test:eval", limit=200, seed=0)
    model = build_model("resnet18").eval()
    load_checkpoint(model, checkpoints["resnet18"])
    with torch.inference_mode():
        logits = model(preprocess_for("cifar10", data_dir)(ds.images))
    accuracy = float(np.mean(logits.argmax(1).numpy() == ds.labels))
    assert accuracy >= 0.85, accuracy


# --- the Speech Commands VGG-16 (one input channel, 98 x 40) -------------------------------------------------------


@pytest.fixture(scope="module")
def speech_checkpoint(shared_dir):
    return shared_dir / "models" / "speechcommands_vgg16.pt"


def test_vgg16_takes_any_size_and_one_channel():
    model = build_model("vgg16", num_classes=12, in_channels=1).eval()
    staged_shapes = []
    x = torch.randn(2, 1, 98, 40)
    with torch.inference_mode():
        for unit in model.features:
            x = unit(x)
            staged_shapes.append(tuple(x.shape[1:]))
        assert model(torch.randn(2, 1, 98, 40)).shape == (2, 12)
    assert staged_shapes[-1] == (512, 3, 1)  # globally averaged before the classifier
    assert default_cuts("vgg16") == [f"features.{i}" for i in range(13)]
    with pytest.raises(GatiError, match="in_channels must be 1 or 3"):
        build_model("vgg16", in_channels=2)


def test_speech_vgg16_keys_shapes_and_load(speech_checkpoint):
    state = torch.load(speech_checkpoint, map_location="cpu", weights_only=True)
    model = build_model("vgg16", num_classes=12, in_channels=1)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    load_checkpoint(model, speech_checkpoint)
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"].float())
    with pytest.raises(CheckpointError, match=r"fits build_model\('vgg16', num_classes=12, in_channels=1\)"):
        load_checkpoint(build_model("vgg16", num_classes=12), speech_checkpoint)


def test_speech_vgg16_accuracy_on_unseen_clips(shared_dir, speech_checkpoint):
    """96.85% on the whole test split (docs/results.md); 120 clips keep this fast (>= 0.88)."""
    data_dir = shared_dir / "data"
    ds = load_split("speechcommands", data_dir, "test:eval", limit=120, seed=0)
    model = build_model("vgg16", 12, in_channels=1).eval()
    load_checkpoint(model, speech_checkpoint)
    with torch.inference_mode():
        logits = model(preprocess_for("speechcommands", data_dir)(ds.images))
    accuracy = float(np.mean(logits.argmax(1).numpy() == ds.labels))
    assert accuracy >= 0.88, accuracy


# --- checkpoints as training scripts save them ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_common_layout_loads_to_the_same_weights(layout, tmp_path, caplog):
    make, unwrapped = LAYOUTS[layout]
    torch.manual_seed(0)
    source = build_model("resnet18", 4)
    torch.save(make(source), tmp_path / "ckpt.pt")
    model = build_model("resnet18", 4)
    with caplog.at_level(logging.INFO, logger="gati.models.checkpoint"):
        load_checkpoint(model, tmp_path / "ckpt.pt")
    assert_same_weights(model, source)
    assert len(caplog.records) == len(unwrapped)
    for record, said in zip(caplog.records, unwrapped):
        assert said in record.getMessage()


def test_loading_is_exactly_as_strict_as_pytorch(tmp_path):
    """A state dict that says it was saved by a BatchNorm that tracks batches (`_metadata` version 2) and lacks
    `num_batches_tracked`: PyTorch's strict load refuses it, and so do we; without the metadata both accept it."""
    state = build_model("resnet18", 4).state_dict()
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(build_model("resnet18", 4)).load_state_dict(state, strict=True)
    torch.save(state, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="missing keys: bn1.num_batches_tracked"):
        load_checkpoint(build_model("resnet18", 4), tmp_path / "v2.pt")
    torch.save(dict(state), tmp_path / "no-metadata.pt")
    load_checkpoint(build_model("resnet18", 4), tmp_path / "no-metadata.pt")
