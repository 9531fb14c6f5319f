"""`ccied-p2p bench e2e --quick`: real nodes over emulated links; the JSON keys and the basic sanity of figures."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ccied_p2p.bench import e2e

pytestmark = [pytest.mark.slow, pytest.mark.weights("vgg/best@0.75")]

KEYS = (
    "accuracy",
    "agreement",
    "hit_rate",
    "bytes_per_request",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "hit_latency_mean_ms",
    "miss_latency_mean_ms",
)


@pytest.mark.timeout(400)
def test_quick_bench(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    e2e.add_arguments(parser)
    args = parser.parse_args(["--quick", "--json", "--requests", "80", "--plots", str(tmp_path)])
    result = e2e.run(args)

    assert result["workload"] == "camera"
    assert result["model"] == "vgg"
    assert result["link"] == {"mbit": 10.0, "rtt_ms": 20.0}
    configs = result["configs"]
    assert set(configs) == set(e2e.CONFIGS)
    for name, c in configs.items():
        for key in KEYS:
            assert key in c, (name, key)
        assert c["failed"] == 0, name
        assert c["requests"] == 80, name
        assert 0.5 <= c["accuracy"] <= 1.0, name
        assert c["latency_p50_ms"] <= c["latency_p95_ms"], name
    # What crossed the network.
    assert configs["local"]["bytes_per_request"] == 0
    assert configs["local"]["sources"]["local"] == 80
    for name in ("offload", "split", "split_pruned"):
        assert configs[name]["sources"]["peer"] == 80, name
        assert configs[name]["hit_rate"] == 0.0
        assert configs[name]["latency_mean_ms"] >= 20.0, name  # one 20 ms round trip at least
    assert configs["split"]["bytes_per_transfer"] >= 12_000  # 64x7x7 float32
    assert configs["split_pruned"]["bytes_per_transfer"] < configs["split"]["bytes_per_transfer"] / 4
    assert configs["split"]["agreement"] == 1.0  # same model, float32 on the wire
    # The cache answers some of a redundant stream, much faster than the network does.
    assert configs["ccied"]["hit_rate"] > 0.1
    assert configs["ccied"]["hit_latency_mean_ms"] < configs["ccied"]["miss_latency_mean_ms"] / 3
    assert configs["ccied_shared"]["hit_rate"] >= configs["ccied"]["hit_rate"]
    # The control stream ran too (accuracy target on both streams), and the analyses are there.
    assert {r["workload"] for r in result["runs"]} == {"camera", "control"}
    assert "ccied_vs_split_latency" in result["targets"]
    assert result["thresholds"]["vgg"]
    assert result["pruning"]["vgg"]
    assert result["offline"]["vgg"]
    assert result["planner"]["measured_best"] in e2e.CONFIGS
    assert "ccied_shared" in e2e.render(result)
    assert (tmp_path / "report.md").is_file()
    assert (tmp_path / "latency_cdf.png").is_file()
