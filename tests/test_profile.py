"""The profile measures what the engine will pay: stages, lookups inside passes, async overlap."""
import torch

from gati.bundle import cache_file, load_bundle
from gati.cache import load_cache
from gati.profile import Profile, lookup_times_ms, overlap_times_ms, profile_model, stage_times_ms


def _caches(path, manifest):
    return {(c["cut"], c["variant"]): load_cache(path / cache_file(c["cut"], c["variant"]))
            for c in manifest["caches"]}


def test_every_cache_gets_a_lookup_and_an_overlap_time(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    caches = _caches(tiny_bundle, bundle.manifest)
    x = torch.zeros(1, *bundle.input_shape)
    stage_ms = stage_times_ms(bundle.staged, x, "cpu", repeats=3, warmup=1)
    lookups = lookup_times_ms(bundle.staged, caches, x, "cpu", repeats=3, warmup=1)
    overlaps = overlap_times_ms(bundle.staged, caches, x, "cpu", stage_ms, repeats=3, warmup=1)
    keys = {f"{cut}:{variant}" for cut, variant in caches}
    assert set(lookups) == keys and all(v > 0 for v in lookups.values())
    # a cache at the last stage never runs (the head answers), so it has no overlap to measure
    assert set(overlaps) <= keys and all(v >= 0 for v in overlaps.values())
    assert len(overlaps) >= len(keys) - 1


def test_profile_round_trips_and_reads_profiles_written_before_overlaps(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    caches = _caches(tiny_bundle, bundle.manifest)
    profile = profile_model(bundle.model, bundle.staged, caches, torch.zeros(1, *bundle.input_shape),
                            "cpu", repeats=3)
    again = Profile.from_dict(profile.to_dict())
    assert again == profile and again.overlap(*next(iter(caches))) is not None
    old = profile.to_dict()
    del old["overlap_ms"]
    assert Profile.from_dict(old).overlap(*next(iter(caches))) is None
