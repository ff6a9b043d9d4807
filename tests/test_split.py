import numpy as np
import pytest
import torch

from gati.errors import GatiError
from gati.models import build_model, default_cuts
from gati.models.split import split_model
from tests.tinynet import CUTS, TinyNet


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16"])
def test_staged_model_computes_exactly_the_base_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    staged = split_model(model, default_cuts(arch))
    assert len(staged.stages) == len(default_cuts(arch)) + 1
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(staged(x), model(x))


def test_stages_share_parameters_with_the_model():
    model = TinyNet(4).eval()
    staged = split_model(model, CUTS)
    ours = {p.data_ptr() for p in staged.parameters()}
    assert ours == {p.data_ptr() for p in model.parameters()}


def test_each_stage_ends_at_its_cut():
    model = TinyNet(4).eval()
    staged = split_model(model, CUTS)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        a = staged.stages[0](x)
        assert torch.equal(a, model.stem(x))
        assert torch.equal(staged.stages[1](a), model.block1(a))


def test_a_cut_inside_a_residual_block_is_rejected():
    model = build_model("resnet18", 10)
    with pytest.raises(GatiError, match="skip connection"):
        split_model(model, ["layer1.0.bn1"])


def test_unknown_and_misordered_cuts_are_rejected():
    model = TinyNet(4)
    with pytest.raises(GatiError, match="not submodules"):
        split_model(model, ["nope"])
    with pytest.raises(GatiError, match="forward order"):
        split_model(model, ["block2", "block1"])


def test_features_spilled_to_files_equal_those_kept_in_memory(tmp_path):
    from gati.data import Dataset
    from gati.pipeline.extract import extract
    from gati.preprocess import Preprocess
    torch.manual_seed(0)
    staged = split_model(TinyNet(4).eval(), CUTS)
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8).numpy()
    data = Dataset("tiny", "train", images, np.arange(10) % 4, [str(i) for i in range(10)], ["a", "b", "c", "d"])
    pre = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (32, 32))
    wanted = {0: {"linear": "gap"}, 1: {"fc": "gap", "convfc": "pool4"}}
    kept, logits = extract(staged, data, pre, wanted, "cpu", 3, "train")
    spilled, spilled_logits = extract(staged, data, pre, wanted, "cpu", 3, "train", spill=tmp_path)
    assert kept.keys() == spilled.keys() and len(list(tmp_path.iterdir())) == len(kept)
    assert all(torch.equal(kept[k], spilled[k]) for k in kept) and torch.equal(logits, spilled_logits)
