"""`gati train-base`: a short real training run writes a checkpoint that `gati build` can load."""
import torch

from gati.models import build_model, load_checkpoint
from gati.pipeline.train_base import TrainConfig, augment, train_base


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
