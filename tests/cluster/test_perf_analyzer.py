"""Triton's perf_analyzer, unchanged, against the aggregator's Open Inference Protocol port.

perf_analyzer is a C++ binary that is not on PyPI for every platform; the test runs where one is found
(`PERF_ANALYZER=/path/to/perf_analyzer`, or on PATH) and skips elsewhere.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.cluster.conftest import start_cluster
from tests.cluster.helpers import Cluster


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory, cluster_bundle) -> Cluster:
    return start_cluster(request, tmp_path_factory, cluster_bundle, lookup_ms=2000)


def test_perf_analyzer_measures_gati_over_http(cluster, cluster_bundle):
    binary = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not binary:
        pytest.skip("no perf_analyzer (set PERF_ANALYZER or put it on PATH)")
    url = f"{cluster.cfg.aggregator.host}:{cluster.cfg.aggregator.http_port}"
    # Windows of a fixed request count and a loose stability rule: this checks that perf_analyzer runs
    # against GATI unchanged, on a machine too busy for its default stability rule (10% over 5 s windows).
    command = [binary, "-m", cluster_bundle.name, "-u", url, "-i", "http", "--concurrency-range", "1:2",
               "--measurement-mode", "count_windows", "--measurement-request-count", "100",
               "--stability-percentage", "100", "--max-trials", "5"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    print("$", " ".join(command))
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
    assert "Request concurrency: 1" in out.stdout and "Request concurrency: 2" in out.stdout
    assert "Throughput:" in out.stdout
