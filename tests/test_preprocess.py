"""Preprocessing as data: channel conversion and resizing as PIL does them, the manifest's form, the user's values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gati.data import preprocess_for
from gati.errors import GatiError, InvalidInput
from gati.preprocess import Preprocess, image_pixels, to_channels

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (3, 20, 14, 3), dtype=np.uint8)


def test_normalisation_per_channel_for_one_and_three_channels():
    for pre, images in ((Preprocess((0.1, 0.5, 0.9), (0.2, 0.3, 0.4), (20, 14)), RGB),
                        (Preprocess((0.3,), (0.2,), (20, 14)), RGB[..., :1])):
        out = pre(images)
        manual = (images.astype(np.float64) / 255 - np.array(pre.mean)) / np.array(pre.std)
        assert out.shape == (3, pre.channels, 20, 14) and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), manual.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_numpy_normalises_bit_for_bit_as_torch_did_for_every_pixel_value():
    """Numpy normalises, so that the front door needs no torch; bundles were calibrated on torch's float32 steps
    (x / 255, then (x - mean) / std): every pixel value of every channel must come out identical."""
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    rng = np.random.default_rng(1)
    for mean, std in [((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), ((0.1307,), (0.3081,)),
                      *[(tuple(rng.uniform(-1, 1, c)), tuple(rng.uniform(0.01, 2, c))) for c in (1, 3, 3, 3)]]:
        pre = Preprocess(mean, std, (16, 16))
        images = np.repeat(values, pre.channels, axis=-1)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        m, s = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))  # as the old code
        by_torch = (x - m) / s
        assert torch.equal(pre(images), by_torch) and pre.array(images).dtype == np.float32


def test_channels_convert_exactly_as_pil():
    grey = to_channels(RGB, 1)
    for img, g in zip(RGB, grey):
        assert np.array_equal(g[..., 0], np.asarray(Image.fromarray(img).convert("L")))
        assert np.array_equal(to_channels(g, 3), np.asarray(Image.fromarray(g[..., 0]).convert("RGB")))
    # A greyscale model fed colour pixels sees what it would see from the image converted by PIL.
    pre = Preprocess((0.5,), (0.25,), (20, 14))
    assert torch.equal(pre(RGB), pre(grey))


@pytest.mark.parametrize("src, dst", [((96, 80), (32, 32)), ((20, 14), (32, 32)), ((40, 98), (98, 40))])
def test_resize_is_bilinear_like_pil(src, dst):
    """Antialiased when shrinking: within 1 grey level (of 255) of PIL's BILINEAR resize, which rounds to integers."""
    smooth = np.clip(np.cumsum(RNG.integers(-20, 21, (*src, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    pre = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), dst)
    ours = pre(smooth[None])[0].permute(1, 2, 0).numpy() * 255
    theirs = np.asarray(Image.fromarray(smooth).resize(dst[::-1], Image.BILINEAR), dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1 and np.abs(ours - theirs).mean() < 0.4


@pytest.mark.parametrize("src, dst", [((96, 80), (32, 32)), ((20, 14), (32, 32)), ((40, 98), (98, 40)),
                                      ((33, 47), (32, 32))])
def test_resize_gives_what_torch_gave_to_bundles_resized_before_within_float_rounding(src, dst):
    """Torch's antialiased bilinear resized inputs before 2026-12-07 (it follows the same filter as PIL)."""
    pixels = RNG.integers(0, 256, (2, *src, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    by_torch = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=False, antialias=True)
    ours = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), dst)(pixels)
    assert ours.shape == by_torch.shape and (ours - by_torch).abs().max() < 1e-5


def test_inputs_of_the_model_size_are_not_resampled():
    pre = Preprocess((0.0,), (1.0,), (20, 14))
    assert torch.allclose(pre(RGB[..., :1])[:, 0], torch.from_numpy(RGB[..., 0] / 255).float())


def test_bad_pixels_are_invalid_input():
    pre = Preprocess((0.5,), (0.25,), (20, 14))
    for bad in (RGB.astype(np.float32), RGB[0], RNG.integers(0, 256, (1, 4, 4, 4), dtype=np.uint8),
                np.zeros((1, 0, 4, 3), np.uint8), [[1, 2]]):
        with pytest.raises(InvalidInput, match="N x H x W x C"):
            pre(bad)


def test_image_pixels_keep_greyscale_as_one_channel():
    grey = Image.fromarray(RGB[0, ..., 0])
    assert image_pixels(grey).shape == (20, 14, 1)
    assert image_pixels(grey.convert("LA")).shape == (20, 14, 1)
    assert image_pixels(Image.fromarray(RGB[0]).convert("RGBA")).shape == (20, 14, 3)
    assert image_pixels(Image.fromarray(RGB[0]).convert("P")).shape == (20, 14, 3)


def test_dict_round_trip_and_the_manifest_form():
    pre = Preprocess((0.3325,), (0.1969,), (98, 40))
    entry = pre.to_dict()
    assert entry == {"channels": 1, "size": [98, 40], "mean": [0.3325], "std": [0.1969], "resize": "bilinear"}
    assert Preprocess.from_dict(entry) == pre
    assert Preprocess([0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [32, 32]) == Preprocess((0.5,) * 3, (0.25,) * 3)


def test_an_older_manifest_entry_means_32x32_rgb():
    pre = Preprocess.from_dict({"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]})
    assert pre.input_shape == (3, 32, 32) and pre.resize == "bilinear"


@pytest.mark.parametrize("entry, message", [
    ({"std": [0.2]}, "malformed"),
    ("0.5", "malformed"),
    ({"mean": [0.5], "std": [0.2, 0.2]}, "one mean and one std per channel"),
    ({"mean": [0.5] * 4, "std": [0.2] * 4}, "1 or 3 channels"),
    ({"mean": [0.5], "std": [0.0]}, "std positive"),
    ({"mean": [0.5], "std": [0.2], "size": [0, 4]}, "two positive integers"),
    ({"mean": [0.5], "std": [0.2], "size": "32x32"}, "must be numbers"),
    ({"mean": [0.5], "std": [0.2], "resize": "cubic"}, "unknown resize"),
    ({"mean": [0.5], "std": [0.2], "channels": 3}, "3 channels but gives 1"),
])
def test_malformed_entries_are_named(entry, message):
    with pytest.raises(GatiError, match=message):
        Preprocess.from_dict(entry)


def test_the_users_values_replace_the_data_sets(tmp_path):
    # All of mean, std and size given: the data set is not read (there is none at tmp_path).
    pre = preprocess_for("imagefolder", tmp_path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=(64, 48))
    assert pre == Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (64, 48))
    # The gaps come from the data set's own preprocessing.
    assert preprocess_for("cifar10", tmp_path, size=(48, 48)) == Preprocess(
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (48, 48))
    assert preprocess_for("speechcommands", tmp_path, mean=(0.5,), std=(0.2,)) == Preprocess((0.5,), (0.2,), (98, 40))
    with pytest.raises(GatiError, match="both the mean and the std"):
        preprocess_for("cifar10", tmp_path, mean=(0.5, 0.5, 0.5))
    with pytest.raises(GatiError, match="3 mean values given for 1 channels"):
        preprocess_for("cifar10", tmp_path, mean=(0.5,) * 3, std=(0.2,) * 3, channels=1)
    with pytest.raises(GatiError, match="cifar10 statistics are for 3 channel"):
        preprocess_for("cifar10", tmp_path, channels=1)
