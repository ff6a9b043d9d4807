"""`gati train-base`: a short real training run writes a checkpoint that `gati build` can load."""
import io
import re
import sys

import pytest
import torch

import gati.pipeline.train_base as train_base_module
from gati.errors import GatiError
from gati.models import build_model, load_checkpoint
from gati.pipeline.train_base import TrainConfig, augment, train_base
from tests.tinynet import write_folder


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_data, tmp_path):
    data, _ = tiny_data
    out = tmp_path / "base.pt"
    result = train_base(TrainConfig(arch="resnet18", dataset="imagefolder", data_dir=data, out=out, epochs=4,
                                    batch_size=32, lr=0.05, train_limit=64, yes=True))
    assert out.is_file() and result["images"] == 64
    assert result["final_loss"] < result["first_loss"]
    model = build_model("resnet18", 4)
    load_checkpoint(model, out)
    assert all(v.dtype == torch.float32 for v in torch.load(out).values() if v.is_floating_point())


def test_augment_keeps_shapes_and_only_crops_or_flips():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    y = augment(x, gen)
    assert y.shape == x.shape
    assert not torch.equal(y, x)


def test_a_long_cpu_run_prints_an_estimate_first_and_needs_confirmation(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_base_module, "LONG_CPU_RUN_S", 0)  # every run counts as long
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: nobody to ask
    out = tmp_path / "base.pt"
    with pytest.raises(GatiError, match="not confirmed"):
        train_base(TrainConfig(arch="resnet18", dataset="imagefolder", data_dir=tiny_data[0], out=out, epochs=30,
                               batch_size=256, train_limit=64))
    assert re.search(r"estimated CPU training time: [\d.]+ min \(30 epochs x 1 batches of 256, from timing 8 images",
                     capsys.readouterr().err)
    assert not out.exists()


def test_a_greyscale_data_set_trains_a_one_channel_model(tmp_path):
    data = write_folder(tmp_path / "grey", train_per_class=8, test_per_class=2, size=(20, 14), channels=1)
    out = tmp_path / "grey.pt"
    train_base(TrainConfig(arch="resnet18", dataset="imagefolder", data_dir=data, out=out, epochs=1, batch_size=16,
                           yes=True))
    load_checkpoint(build_model("resnet18", 4, in_channels=1), out)
