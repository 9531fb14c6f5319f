"""`ccied-p2p bench regimes --quick`: a quota'd device, two peers, an emulated link; the JSON and its sanity."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ccied_p2p.bench import regimes
from ccied_p2p.runtime.quota import CgroupUnavailableError, find_controller


def _unavailable() -> str | None:
    try:
        find_controller()
    except CgroupUnavailableError as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(_unavailable() is not None, reason=f"no CPU quota here: {_unavailable()}"),
]


@pytest.mark.timeout(900)
def test_quick_regimes(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    regimes.add_arguments(parser)
    result = regimes.run(
        parser.parse_args(
            ["--quick", "--frames", "4", "--warmup", "2", "--repeats", "2", "--plots", str(tmp_path)]
        )
    )
    rows = result["regimes"]
    assert result["warmup"] == 2  # answered by the adaptive devices first, not measured
    assert result["split_encoding"] == "dense-i4-deflate"  # lite.WIRE_ENCODING: the split sends 4-bit values
    assert [(r["quota"], r["mbit"], r["stream"], r["frames_stay"]) for r in rows] == [
        (0.25, 10.0, "camera", False),
        (0.25, 10.0, "camera", True),
    ]
    for r in rows:
        assert r["rtt_ms"] == 20.0
        assert r["failed"] == 0
        assert r["frames"] == 4
        assert r["best_fixed"] in ("local", "offload", "split")
        assert r["ratio"] == pytest.approx(r["adaptive_ms"] / r["best_fixed_ms"])
        # Two workers per cell: the row's figures are the medians of their means, their ratios kept.
        assert r["repeats"] == 2
        assert len(r["ratios"]) == 2
        assert all(x > 0 for x in r["ratios"])
        assert len(r["latencies_ms"]["adaptive"]) == 2 * 4
        # Per frame, both workers: what was ranked first and what answered, adding up to `used`.
        assert len(r["trace"]["chosen"]) == len(r["trace"]["used"]) == 2 * 4
        assert all(r["trace"]["chosen"])
        assert {u: r["trace"]["used"].count(u) for u in r["trace"]["used"]} == r["used"]
        assert 0.0 <= r["accuracy"] <= 1.0
        # Every remote strategy pays at least the emulated round trip.
        assert r["fixed_ms"]["offload"] >= 20.0
        assert r["fixed_ms"]["split"] >= 20.0
    stay = rows[1]
    assert stay["best_fixed"] != "offload"
    assert not any(u.endswith("offload") for u in stay["used"])  # frames never left the device
    assert (
        stay["accuracy"] >= 0.75
    )  # the same model and frames; only 4-bit values on the wire may flip an unsure top-1
    assert (tmp_path / "regimes_ratio.png").stat().st_size > 0
    assert (tmp_path / "regimes_cdf.png").stat().st_size > 0
