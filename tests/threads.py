"""Torch's intra-op thread count for the tests, set for a scope and restored after it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

# CI has two cores. Two threads ran the ResNet-18 integration build, the cache fits and base training 30% faster
# than one (docs/results.md, "Test suite"); more would contend with the services the cluster tests start.
SUITE_THREADS = min(2, torch.get_num_threads())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then restore the count it found."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
