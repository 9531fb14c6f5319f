"""The e2e report: markdown tables and PNG plots from a (synthetic) bench result, headless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccied_p2p.report import CONFIG_ORDER, main_table, markdown, plot_all, write_report


def _config(mean: float, hit: float, sent: float) -> dict[str, Any]:
    lat = [mean * (0.5 + i / 20) for i in range(20)]
    return {
        "accuracy": 0.9,
        "agreement": 0.99,
        "hit_rate": hit,
        "bytes_per_request": sent * (1 - hit),
        "bytes_per_transfer": sent,
        "latency_mean_ms": mean,
        "latency_p50_ms": mean,
        "latency_p95_ms": mean * 1.4,
        "latency_p99_ms": mean * 1.5,
        "hit_latency_mean_ms": 1.0 if hit else None,
        "miss_latency_mean_ms": mean,
        "requests_per_s": 1000 / mean,
        "cpu_ms_per_request": 0.5,
        "stages_ms": {
            "head": 0.3,
            "lookup": 0.1,
            "encode": 0.1,
            "transfer": mean / 2,
            "tail": 0.5,
            "decode": 0.1,
        },
        "latencies_ms": lat,
    }


def _result() -> dict[str, Any]:
    configs = {
        "local": _config(1.0, 0.0, 0),
        "offload": _config(25.0, 0.0, 900),
        "split": _config(32.0, 0.0, 12600),
        "split_pruned": _config(25.0, 0.0, 850),
        "ccied": _config(13.0, 0.5, 850),
        "ccied_shared": _config(9.0, 0.7, 850),
    }
    runs = [
        {
            "workload": "camera",
            "model": "vgg",
            "link": {"mbit": mbit, "rtt_ms": 20.0},
            "requests": 20,
            "configs": configs,
        }
        for mbit in (1.0, 10.0, 100.0)
    ]
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "test cpu", "cores": 2, "python": "3.11", "torch": "2"},
        "command": "ccied-p2p bench e2e",
        "seconds": 1.0,
        "dataset": "fashion-mnist",
        "workload": "camera",
        "model": "vgg",
        "link": {"mbit": 10.0, "rtt_ms": 20.0},
        "requests": 20,
        "configs": configs,
        "runs": runs,
        "targets": {"ccied_vs_split_latency": {"value": 0.4, "target": 0.5, "met": True}},
        "calibration": {"vgg": {"threshold": 0.05}},
        "thresholds": {
            "vgg": [{"threshold": t, "hit_rate": t * 5, "false_hit_rate": t / 2} for t in (0.01, 0.05, 0.1)]
        },
        "pruning": {
            "vgg": [
                {"amount": a, "accuracy": 0.92 - a / 20, "sparse_bytes": 5000 * (1 - a)}
                for a in (0, 0.5, 0.75)
            ]
        },
        "notes": ["a note"],
    }


def test_main_table_has_every_configuration() -> None:
    text = main_table(_result()["configs"])
    lines = text.splitlines()
    assert len(lines) == 2 + len(CONFIG_ORDER)
    assert lines[2].startswith("| local |")
    assert "| ccied | 0.9000 | 0.9900 | 0.500 |" in text


def test_write_report_writes_every_plot(tmp_path: Path) -> None:
    path = write_report(_result(), tmp_path / "out")
    assert path.name == "report.md"
    names = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert names == {
        "latency_cdf.png",
        "latency_vs_link.png",
        "bytes_per_request.png",
        "accuracy_vs_pruning.png",
        "cache_threshold.png",
        "stage_breakdown.png",
    }
    for name in names:
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 5000
    text = path.read_text()
    assert "# CCIED end-to-end evaluation" in text
    assert "![latency_cdf](latency_cdf.png)" in text
    assert "| ccied_vs_split_latency | 0.400 | 0.5 | yes |" in text
    assert "- a note" in text


def test_missing_data_skips_plots(tmp_path: Path) -> None:
    r = _result()
    for key in ("pruning", "thresholds", "runs"):
        r.pop(key)
    for c in r["configs"].values():
        c.pop("latencies_ms")
    written = plot_all(r, tmp_path)
    assert set(written) == {"bytes_per_request.png", "stage_breakdown.png"}
    assert "## Every combination" not in markdown(r)


@pytest.mark.parametrize("cam", [True, False])
def test_camera_resolution_section(tmp_path: Path, cam: bool) -> None:
    r = _result()
    if cam:
        r["camera_resolution"] = {
            "workload": "camera-224",
            "model": "efficientnet-lite0",
            "link": {"mbit": 10.0, "rtt_ms": 20.0},
            "requests": 20,
            "split_at": "_blocks.5._bn2",
            "activation_shape": [80, 14, 14],
            "activation_bytes": 62720,
            "photos": ["sklearn:china.jpg"],
            "jpeg_bytes_mean": 19000.0,
            "configs": r["configs"],
        }
    text = markdown(r, plot_all(r, tmp_path))
    assert ("## Camera resolution" in text) is cam
