"""The evaluation report: a markdown page and PNG plots (matplotlib, headless) from ``bench e2e``'s JSON.

``write_report(result, out_dir)`` writes ``report.md`` and, when the result holds the data for them,
``latency_cdf.png``, ``latency_vs_link.png``, ``bytes_per_request.png``, ``accuracy_vs_pruning.png``,
``cache_threshold.png`` and ``stage_breakdown.png``. Figures are drawn on :class:`matplotlib.figure.Figure`
objects (the Agg canvas), never through pyplot, so no display and no global backend are involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONFIG_ORDER", "STAGES", "main_table", "markdown", "plot_all", "write_report"]

# The configurations bench e2e runs and the request stages it times, in the order tables and plots show them.
CONFIG_ORDER = ("local", "offload", "split", "split_pruned", "ccied", "ccied_shared")
STAGES = ("head", "lookup", "encode", "transfer", "tail", "decode")
_COLORS = {
    "local": "#4c72b0",
    "offload": "#dd8452",
    "split": "#55a868",
    "split_pruned": "#8172b3",
    "ccied": "#c44e52",
    "ccied_shared": "#937860",
}


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def main_table(configs: dict[str, Any]) -> str:
    """A markdown table of the per-configuration figures."""
    rows = [
        "| config | accuracy | agreement | hit rate | B/request | B/transfer | mean ms | p50 | p95 | p99 | "
        "hit ms | miss ms | req/s | asker CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONFIG_ORDER:
        c = configs.get(name)
        if c is None:
            continue
        rows.append(
            f"| {name} | {_fmt(c.get('accuracy'), '.4f')} | {_fmt(c.get('agreement'), '.4f')} | "
            f"{c.get('hit_rate', 0.0):.3f} | {c.get('bytes_per_request', 0.0):.0f} | "
            f"{c.get('bytes_per_transfer', 0.0):.0f} | {_fmt(c.get('latency_mean_ms'))} | "
            f"{_fmt(c.get('latency_p50_ms'))} | {_fmt(c.get('latency_p95_ms'))} | {_fmt(c.get('latency_p99_ms'))} | "
            f"{_fmt(c.get('hit_latency_mean_ms'))} | {_fmt(c.get('miss_latency_mean_ms'))} | "
            f"{_fmt(c.get('requests_per_s'), '.0f')} | {_fmt(c.get('cpu_ms_per_request'), '.2f')} |"
        )
    return "\n".join(rows)


def _new_figure(width: float = 7.0, height: float = 4.2, cols: int = 1) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'ccied-p2p[eval]'") from exc

    fig = Figure(figsize=(width * cols, height), dpi=110, layout="constrained")
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    return fig, axes


def _cdf(ax: Any, configs: dict[str, Any], title: str) -> bool:
    drawn = False
    for name in CONFIG_ORDER:
        lat = configs.get(name, {}).get("latencies_ms")
        if not lat:
            continue
        xs = np.sort(np.asarray(lat, dtype=float))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        ax.step(xs, ys, where="post", label=name, color=_COLORS[name])
        drawn = True
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="lower right")
    return drawn


def _title(r: dict[str, Any]) -> str:
    return (
        f"{r['workload']} stream, {r['model']}, {r['link']['mbit']:g} Mbit/s, {r['link']['rtt_ms']:g} ms RTT"
    )


def plot_latency_cdf(result: dict[str, Any], path: Path) -> bool:
    panels = [(result["configs"], _title(result))]
    cam = result.get("camera_resolution")
    if cam:
        panels.append((cam["configs"], _title(cam)))
    fig, axes = _new_figure(cols=len(panels))
    drawn = [_cdf(ax, configs, title) for ax, (configs, title) in zip(axes, panels, strict=True)]
    if not any(drawn):
        return False
    fig.savefig(path)
    return True


def plot_latency_vs_link(result: dict[str, Any], path: Path) -> bool:
    runs = [
        r
        for r in result.get("runs", [])
        if r["model"] == result["model"] and r["workload"] == result["workload"]
    ]
    if not runs:
        return False
    runs.sort(key=lambda r: r["link"]["mbit"])
    fig, (ax,) = _new_figure()
    xs = [r["link"]["mbit"] for r in runs]
    for name in CONFIG_ORDER:
        ys = [r["configs"].get(name, {}).get("latency_mean_ms") for r in runs]
        if all(y is None for y in ys):
            continue
        ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=name, color=_COLORS[name])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("link rate (Mbit/s), 20 ms RTT")
    ax.set_ylabel("mean latency (ms, log)")
    ax.set_title(f"{result['workload']} stream, {result['model']}: mean latency vs link rate", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def _bars(ax: Any, configs: dict[str, Any], title: str) -> None:
    names = [n for n in CONFIG_ORDER if n in configs]
    per_req = [max(configs[n].get("bytes_per_request", 0.0), 0.0) for n in names]
    per_xfer = [max(configs[n].get("bytes_per_transfer", 0.0), 0.0) for n in names]
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, per_req, 0.4, label="per request (hits send 0)", color="#4c72b0")
    ax.bar(pos + 0.2, per_xfer, 0.4, label="per transferred request", color="#dd8452")
    for x, v in zip(pos + 0.2, per_xfer, strict=True):
        if v > 0:
            ax.annotate(f"{v:.0f}", (x, v), ha="center", va="bottom", fontsize=7)
        else:
            ax.annotate(
                "0 B", (x - 0.2, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7
            )
    ax.set_xticks(pos, names, rotation=20, fontsize=8)
    if any(v > 0 for v in per_req + per_xfer):
        ax.set_yscale("log")
    ax.set_ylabel("bytes sent by the asker (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_bytes(result: dict[str, Any], path: Path) -> bool:
    panels = [(result["configs"], _title(result))]
    cam = result.get("camera_resolution")
    if cam:
        panels.append((cam["configs"], _title(cam)))
    fig, axes = _new_figure(cols=len(panels))
    for ax, (configs, title) in zip(axes, panels, strict=True):
        _bars(ax, configs, title)
    fig.savefig(path)
    return True


def plot_pruning(result: dict[str, Any], path: Path) -> bool:
    curves = {m: rows for m, rows in result.get("pruning", {}).items() if rows}
    if not curves:
        return False
    fig, (ax,) = _new_figure()
    twin = ax.twinx()
    for i, (model, rows) in enumerate(sorted(curves.items())):
        amounts = [r["amount"] for r in rows]
        color = ("#4c72b0", "#dd8452", "#55a868")[i % 3]
        ax.plot(
            amounts, [100 * r["accuracy"] for r in rows], marker="o", color=color, label=f"{model} accuracy"
        )
        twin.plot(
            amounts,
            [r["sparse_bytes"] for r in rows],
            marker="s",
            linestyle="--",
            color=color,
            alpha=0.6,
            label=f"{model} sparse-f16-lz4 bytes",
        )
    ax.set_xlabel("fraction of split-layer channels pruned")
    ax.set_ylabel("test accuracy (%)")
    twin.set_ylabel("activation on the wire (bytes, dashed)")
    ax.set_title("accuracy and transfer size vs split-layer pruning", fontsize=10)
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    fig.savefig(path)
    return True


def plot_thresholds(result: dict[str, Any], path: Path) -> bool:
    sweeps = {m: rows for m, rows in result.get("thresholds", {}).items() if rows}
    if not sweeps:
        return False
    calib = dict(result.get("calibration", {}))
    cam = result.get("camera_resolution")
    if cam:
        calib[cam["model"]] = cam.get("calibration", {})
    fig, axes = _new_figure(width=4.6, cols=len(sweeps))
    for ax, (model, rows) in zip(axes, sorted(sweeps.items()), strict=True):
        ts = [r["threshold"] for r in rows]
        ax.plot(ts, [r["hit_rate"] for r in rows], marker="o", label="hit rate")
        ax.plot(ts, [r["false_hit_rate"] for r in rows], marker="s", label="false hits / hits")
        chosen = calib.get(model, {}).get("threshold")
        if chosen is not None and chosen > 0:  # < 0: no threshold met the budget, the cache never answers
            ax.axvline(chosen, color="grey", linestyle=":", label="calibrated")
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_xlabel("cache distance threshold (log)")
        ax.set_title(f"{model}: camera stream", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path)
    return True


def _stages(ax: Any, configs: dict[str, Any], title: str) -> None:
    names = [n for n in CONFIG_ORDER if n in configs]
    left = np.zeros(len(names))
    colors = ("#4c72b0", "#8172b3", "#dd8452", "#c44e52", "#55a868", "#937860")
    for stage, color in zip(STAGES, colors, strict=True):
        vals = np.array([configs[n].get("stages_ms", {}).get(stage, 0.0) or 0.0 for n in names])
        ax.barh(names, vals, left=left, label=stage, color=color)
        left += vals
    total = np.array([configs[n].get("latency_mean_ms") or 0.0 for n in names])
    ax.barh(
        names, np.maximum(total - left, 0.0), left=left, label="other (queue, scheduling)", color="#cccccc"
    )
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per request")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_stages(result: dict[str, Any], path: Path) -> bool:
    panels = [(result["configs"], _title(result))]
    cam = result.get("camera_resolution")
    if cam:
        panels.append((cam["configs"], _title(cam)))
    fig, axes = _new_figure(cols=len(panels))
    for ax, (configs, title) in zip(axes, panels, strict=True):
        _stages(ax, configs, title)
    fig.savefig(path)
    return True


PLOTS = {
    "latency_cdf.png": plot_latency_cdf,
    "latency_vs_link.png": plot_latency_vs_link,
    "bytes_per_request.png": plot_bytes,
    "accuracy_vs_pruning.png": plot_pruning,
    "cache_threshold.png": plot_thresholds,
    "stage_breakdown.png": plot_stages,
}


def plot_all(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Every plot the result has data for, as PNG files in ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fn in PLOTS.items():
        path = out / name
        if fn(result, path):
            written[name] = path
    return written


def _runs_table(runs: Sequence[dict[str, Any]]) -> str:
    head = "| workload | model | Mbit/s | requests | " + " | ".join(CONFIG_ORDER) + " |"
    rows = [head, "|---|---|---:|---:|" + "---:|" * len(CONFIG_ORDER)]
    for r in runs:
        cells = []
        for name in CONFIG_ORDER:
            c = r["configs"].get(name)
            if c is None:
                cells.append("–")
                continue
            hit = f" ({c['hit_rate']:.0%} hits)" if c.get("hit_rate") else ""
            cells.append(f"{_fmt(c.get('latency_mean_ms'))}{hit}")
        rows.append(
            f"| {r['workload']} | {r['model']} | {r['link']['mbit']:g} | {r['requests']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(rows)


def _accuracy_table(runs: Sequence[dict[str, Any]]) -> str:
    rows = [
        "| workload | model | Mbit/s | local acc | split_pruned acc | ccied acc | ccied − local (pp) | ccied agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = r["configs"]
        loc, pr, cc = (c.get(k, {}).get("accuracy") for k in ("local", "split_pruned", "ccied"))
        diff = None if loc is None or cc is None else 100 * (cc - loc)
        rows.append(
            f"| {r['workload']} | {r['model']} | {r['link']['mbit']:g} | {_fmt(loc, '.4f')} | {_fmt(pr, '.4f')} | "
            f"{_fmt(cc, '.4f')} | {_fmt(diff, '+.2f')} | {_fmt(c.get('ccied', {}).get('agreement'), '.4f')} |"
        )
    return "\n".join(rows)


def markdown(result: dict[str, Any], plots: dict[str, Path] | None = None) -> str:
    """The report page as markdown (plots referenced by file name, next to the page)."""
    r = result
    m = r.get("machine", {})
    out = [
        "# CCIED end-to-end evaluation",
        "",
        f"Measured {r.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), Python "
        f"{m.get('python', '?')}, torch {m.get('torch', '?')}; `{r.get('command', 'ccied-p2p bench e2e')}` took "
        f"{r.get('seconds', 0):.0f} s. One run per configuration, one request in flight, same requests for every "
        "configuration; links emulated by the user-space relay (rate + delay).",
        "",
        f"## Headline: {_title(r)}, {r.get('requests', '?')} requests ({r.get('dataset', '')})",
        "",
        main_table(r["configs"]),
        "",
        "Latencies are per request as the asker sees them (ms). Bytes are what the asker sent per request "
        "(cache hits send nothing) and per request that crossed the network. Agreement is with the uncached, "
        "unpruned model; accuracy is against the labels.",
        "",
    ]
    targets = r.get("targets", {})
    if targets:
        out += ["## Targets", "", "| target | measured | bound | met |", "|---|---:|---:|---|"]
        for name, t in targets.items():
            out.append(f"| {name} | {t['value']:.3f} | {t['target']:g} | {'yes' if t['met'] else '**no**'} |")
        out.append("")
    if r.get("runs"):
        out += ["## Every combination (mean latency, ms)", "", _runs_table(r["runs"]), ""]
        out += ["## Accuracy per stream", "", _accuracy_table(r["runs"]), ""]
    off = r.get("offline")
    if off:
        out += [
            "## Long streams replayed offline (same models and cache settings, no network)",
            "",
            "`camera`: requests from one camera (a pool of 500 test images, Zipf popularity, every capture "
            "perturbed); `control`: test images once each, as stored; `captures`: test images once each, "
            "through the camera.",
            "",
            "| model | stream | requests | local acc | split_pruned acc | ccied acc | ccied hit rate |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for model, streams in off.items():
            for name, s in streams.items():
                out.append(
                    f"| {model} | {name} | {s['requests']} | {s['local_accuracy']:.4f} | "
                    f"{s['split_pruned_accuracy']:.4f} | {s['ccied_accuracy']:.4f} | {s['ccied_hit_rate']:.3f} |"
                )
        out.append("")
    cam = r.get("camera_resolution")
    if cam:
        out += [
            f"## Camera resolution: {_title(cam)}, {cam['requests']} frames",
            "",
            f"Pretrained {cam['model']} (ImageNet, 224x224) split at `{cam['split_at']}` (activation "
            f"{'x'.join(map(str, cam['activation_shape']))}, {cam['activation_bytes']} B as float32), fed by the "
            f"virtual camera over {', '.join(cam['photos'])}. Full offload sends each frame as JPEG, quality 90 "
            f"(mean {cam['jpeg_bytes_mean']:.0f} B). Accuracy is agreement with the uncached full model (no labels).",
            "",
            main_table(cam["configs"]),
            "",
        ]
        ep = cam.get("planner")
        if ep:
            out += [
                f"Planner over the block boundaries (wire sizes measured on these frames, hit rate "
                f"{ep['hit_rate']:.2f} applied to every cut): recommends **{ep['recommendation']['label']}** "
                f"({ep['recommendation']['expected_ms']:.1f} ms expected); best split: "
                f"{ep['recommended_split']['label']} ({ep['recommended_split']['expected_ms']:.1f} ms).",
                "",
                "| plan | expected ms | wire bytes |",
                "|---|---:|---:|",
                *(f"| {q['label']} | {q['expected_ms']:.1f} | {q['wire_bytes']:.0f} |" for q in ep["plans"]),
                "",
            ]
    p = r.get("planner")
    if p:
        out += [
            "## Planner vs measurement",
            "",
            f"At {p['link']['mbit']:g} Mbit/s, {p['link']['rtt_ms']:g} ms and the measured hit rate "
            f"{p['hit_rate']:.2f}, `ccied-p2p plan` recommends **{p['recommendation']['label']}** "
            f"({p['recommendation']['expected_ms']:.1f} ms expected); its best collaborative plan is "
            f"{p['recommended_split']['label']} ({p['recommended_split']['expected_ms']:.1f} ms). Measured best: "
            f"**{p['measured_best']}**; best collaborative: **{p['measured_best_collaborative']}**.",
            "",
            "| config | predicted ms | measured ms |",
            "|---|---:|---:|",
        ]
        for k, v in p["predicted_ms"].items():
            out.append(f"| {k} | {v:.1f} | {_fmt(p['measured_ms'].get(k))} |")
        out.append("")
    if plots:
        out += ["## Plots", ""]
        for name in plots:
            out.append(f"![{name[:-4]}]({name})")
        out.append("")
    notes = r.get("notes") or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the plots and ``report.md`` into ``out_dir``; returns the markdown file's path."""
    out = Path(out_dir)
    plots = plot_all(result, out)
    path = out / "report.md"
    path.write_text(markdown(result, plots))
    return path
