"""A small built-in price table, for the hourly estimate that `--dry-run` prints.

Approximate on-demand prices in USD per hour for Linux in us-east-1 (N. Virginia), as listed on
the public Amazon EC2 On-Demand pricing page (aws.amazon.com/ec2/pricing/on-demand/) in 2024-2025.
Other regions cost up to ~30 % more; prices change; EBS volumes, data transfer and S3 are not
included. A type missing here is reported as unknown (give `hourly_usd` in deploy/aws.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

HOURLY_USD_US_EAST_1: dict[str, float] = {
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5.4xlarge": 0.68,
    "c5.9xlarge": 1.53, "c6i.xlarge": 0.17, "c6i.2xlarge": 0.34, "c7i.xlarge": 0.1785,
    "m5.xlarge": 0.192, "m5.2xlarge": 0.384,
    "p3.2xlarge": 3.06, "p3.8xlarge": 12.24, "p3.16xlarge": 24.48,
    "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g5.xlarge": 1.006, "g5.2xlarge": 1.212,
    "g6.xlarge": 0.8048,
}

# Families with NVIDIA GPUs that CUDA builds of PyTorch can use (g4ad is AMD, so not here).
CUDA_FAMILIES = frozenset({"p3", "p3dn", "p4d", "p4de", "p5", "g4dn", "g5", "g6", "g6e"})


@dataclass(frozen=True)
class Cost:
    known_usd: float
    unknown_types: tuple[str, ...]

    def describe(self) -> str:
        text = f"~${self.known_usd:.2f}/hour (us-east-1 on-demand, approximate)"
        if self.unknown_types:
            text += f" plus unpriced: {', '.join(self.unknown_types)}"
        return text


def hourly_usd(instance_type: str, override: float | None = None) -> float | None:
    return override if override is not None else HOURLY_USD_US_EAST_1.get(instance_type)


def total(prices: Iterable[tuple[str, float | None]]) -> Cost:
    known, unknown = 0.0, []
    for instance_type, price in prices:
        if price is None:
            unknown.append(instance_type)
        else:
            known += price
    return Cost(round(known, 4), tuple(unknown))


def default_device(instance_type: str) -> str:
    return "cuda" if instance_type.split(".")[0] in CUDA_FAMILIES else "cpu"
