"""EfficientNet-Lite0 at 224 px: the split is exact, the rotation is exact, pruning keeps the answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccied_p2p.errors import DataUnavailableError

lite = pytest.importorskip("ccied_p2p.lite")


def _model() -> torch.nn.Module:
    from ccied_p2p.models import efficientnet_lite0

    try:
        return efficientnet_lite0()
    except DataUnavailableError as exc:
        pytest.skip(str(exc))


def _frames(n: int) -> np.ndarray:
    from ccied_p2p import video

    try:
        return video.read_clip("tree", max_frames=n)
    except DataUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("cut", ["_blocks.5", "_blocks.11"])
def test_unpruned_split_is_exact(cut: str) -> None:
    model = _model()
    split = lite.lite0_split(cut, prune=False)
    x = lite.to_input(_frames(2))
    with torch.inference_mode():
        whole = model(x)
        h = split.head(x)
        parts = split.tail(h)
    assert tuple(h.shape[1:]) == {"_blocks.5": (80, 14, 14), "_blocks.11": (192, 7, 7)}[cut]
    assert torch.equal(parts, whole)


def test_rotation_keeping_every_channel_changes_nothing() -> None:
    """Folding the principal axes into projection and BatchNorm, and decoding them back, is the identity."""
    cut = "_blocks.5"
    x = lite.to_input(_frames(6))
    reference = _model()
    rotated = lite._restructure(_model(), cut)
    with torch.inference_mode():
        h = lite._prefix(rotated, cut, x)
        mask = lite._rotate_and_prune(rotated, cut, h, keep=80)
        assert bool(mask.all())
        assert torch.allclose(rotated(x), reference(x), atol=1e-3, rtol=1e-3)


def test_pruned_channels_are_exactly_zero() -> None:
    cut = "_blocks.5"
    x = lite.to_input(_frames(6))
    model = lite._restructure(_model(), cut)
    with torch.inference_mode():
        h = lite._prefix(model, cut, x)
        mask = lite._rotate_and_prune(model, cut, h, keep=20)
        act = model._blocks[5](h)
    assert int(mask.sum()) == 20
    assert bool((act[:, ~mask] == 0).all())
    # Principal axes come first: the kept channels carry the most variance.
    var = act.var(dim=(0, 2, 3))
    assert float(var[mask].min()) > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pruned_lite0_agrees_with_the_unpruned_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trained from nothing (fresh weight cache) on train-clip frames; measured on evaluation photos.

    The bound is what this recipe reaches, not the 98% target: at 40 of 80 channels the rotation alone agreed
    on 80% of 400 evaluation frames (README, Camera resolution)."""
    monkeypatch.setenv("CCIED_CACHE", str(tmp_path))
    recipe = lite.DistillRecipe(keep=40, epochs=1, frame_step=4)
    out = lite.prune_summary("_blocks.5", recipe, frames=120, clip_step=20)
    assert out["bytes_per_transfer"] < out["unpruned_bytes"]
    assert out["agreement"] >= 0.6
    assert out["accuracy_after"] >= out["accuracy_before"] - 0.3
    assert any(tmp_path.glob("efficientnet-lite0-pruned-*.safetensors"))


def test_cut_table_orders_encodings_and_measures_the_head() -> None:
    """4-bit values take a quarter of f16's room, and the tail on them still mostly agrees."""
    _model()
    rows = lite.cut_table(cuts=("_blocks.5", "_blocks.11"), frames=24, clip_step=40, repeats=3)
    assert [r["cut"] for r in rows] == ["_blocks.5", "_blocks.11"]
    for r in rows:
        b = r["bytes"]
        assert b[lite.WIRE_ENCODING] < b["dense-i8"] < b["sparse-f16-lz4"]
        assert r["head_ms"] > 0
        assert r["full_ms"] > 0
        assert 0 < r["head_macs"] < r["full_macs"]
        assert r["agreement"]["sparse-f16-lz4"] >= 0.95  # f16 rounding alone flips almost nothing
        assert r["agreement"][lite.WIRE_ENCODING] >= 0.75
    # The later cut does more of the work on the device and sends fewer values.
    assert rows[0]["head_macs_share"] == pytest.approx(0.326, abs=0.001)  # 385 M MACs in all
    assert rows[1]["head_macs_share"] == pytest.approx(0.688, abs=0.001)
    assert rows[1]["bytes"][lite.WIRE_ENCODING] < rows[0]["bytes"][lite.WIRE_ENCODING]


def test_unpruned_summary_sends_every_channel_in_four_bits() -> None:
    _model()
    out = lite.prune_summary("_blocks.11", frames=24, clip_step=40, prune=False)
    assert out["amount"] == 0.0
    assert out["kept_channels"] == out["channels"] == 192
    assert out["encoding"] == lite.WIRE_ENCODING
    # 192 x 7 x 7 values at half a byte and a float32 scale per channel, deflated (plus 4 bytes of body size),
    # and the 18-byte header
    assert out["bytes_per_transfer"] < 0.95 * (192 * 49 // 2 + 4 * 192 + 18)
    assert out["bytes_per_transfer"] < 0.5 * out["jpeg_bytes"]
    assert 0 < out["jpeg_ratio_median"] < 1
    assert 0 <= out["jpeg_ratio_at_most_half"] <= 1
    assert out["recipe"] is None
    # What offloading the frame answers: the unsplit model on the decoded JPEG, scored like the split.
    assert 0.0 <= out["jpeg_agreement"] <= 1.0
    assert 0.0 <= out["jpeg_accuracy"] <= 1.0
    assert out["jpeg_agreement"] < 1.0  # the unsure model's top-1 moves with JPEG artefacts on some frames


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plan_at_camera_resolution_ranks_every_cut_and_encoding() -> None:
    """`ccied-p2p plan --model efficientnet-lite0`: four cuts in two encodings, offload, local; the policy
    on a 25% device agrees with the plan's own ranking, and with frames kept on the device never offloads."""
    import argparse

    from ccied_p2p.plan_cli import add_arguments, measure

    _model()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = [
        "--model",
        "efficientnet-lite0",
        "--frames",
        "16",
        "--repeats",
        "2",
        "--quota",
        "0.25",
        "--top",
        "20",
    ]
    out = measure(parser.parse_args(base))
    assert set(out["cuts"]) == {"_blocks.3._bn2", "_blocks.5._bn2", "_blocks.8._bn2", "_blocks.11._bn2"}
    labels = {p["label"] for p in out["plans"]}
    assert {"local", "offload"} <= labels
    assert {p["encoding"] for p in out["plans"] if p["kind"] == "split"} == {
        "sparse-f16-lz4",
        lite.WIRE_ENCODING,
    }
    for cut in out["cuts"].values():
        assert cut["bytes"][lite.WIRE_ENCODING] < cut["bytes"]["sparse-f16-lz4"]
    assert out["input_wire_bytes"] > 0  # the frames' JPEG
    assert out["slowdown"] == 4.0
    # The policy's first choice is the plan's best kind (both from the same numbers).
    assert out["strategy"]["options"][0]["strategy"] == out["recommendation"]["kind"]
    stay = measure(parser.parse_args([*base, "--frames-stay"]))
    assert all(o["strategy"] != "offload" for o in stay["strategy"]["options"])
