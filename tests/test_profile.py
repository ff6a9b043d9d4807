"""The profile measures what the engine will pay: stages, lookups inside passes, async overlap."""
import pytest
import torch
import yaml

from gati.bundle import load_bundle
from gati.bundle.manifest import Manifest
from gati.errors import GatiError
from gati.pipeline.profile import profile_model


@pytest.fixture(scope="module")
def profiled(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    caches = {(c.cut, c.variant): bundle.info.load_cache(c.cut, c.variant) for c in bundle.manifest.caches}
    x = torch.zeros(1, *bundle.input_shape)
    return bundle, caches, profile_model(bundle.model, bundle.staged, caches, x, "cpu", repeats=3)


def test_every_cache_gets_a_lookup_and_an_overlap_cost(profiled):
    bundle, caches, profile = profiled
    keys = {f"{cut}:{variant}" for cut, variant in caches}
    # a cache at the head's cut never runs (the head answers), so only the others are timed
    timed = {f"{cut}:{variant}" for cut, variant in caches if cut < len(bundle.staged.stages) - 1}
    assert set(profile.lookup_ms) == set(profile.overlap_ms) == timed and timed <= keys
    assert all(v > 0 for v in [*profile.lookup_ms.values(), *profile.overlap_ms.values()])
    assert len(profile.stage_ms) == len(bundle.staged.stages) and profile.base_ms > 0


def test_profile_round_trips_and_reads_profiles_written_before_overlaps(profiled, tiny_bundle):
    bundle, _, profile = profiled
    key = next(iter(profile.lookup_ms)).split(":")
    cut, variant = int(key[0]), key[1]
    text = bundle.manifest.replace(profile=profile).to_yaml()
    assert Manifest.from_yaml(text, "test").profile == profile
    assert profile.overlap(cut, variant) is not None
    old = yaml.safe_load(text)
    del old["profile"]["overlap_ms"]  # a manifest from before overlaps were measured
    assert Manifest.from_yaml(yaml.safe_dump(old), "test").profile.overlap(cut, variant) is None


def test_an_unknown_device_is_refused(profiled):
    bundle, caches, _ = profiled
    with pytest.raises(GatiError, match="cannot profile"):
        profile_model(bundle.model, bundle.staged, caches, torch.zeros(1, 3, 32, 32), "mps")
