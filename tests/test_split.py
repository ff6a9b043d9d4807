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
