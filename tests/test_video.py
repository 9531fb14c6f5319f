"""Camera workloads at 224 px: real clips decoded in order, the labelled photo camera, disjoint splits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ccied_p2p import video
from ccied_p2p.errors import ConfigError, DataUnavailableError
from ccied_p2p.video import LabelledPhoto, PhotoMotion, photo_camera, photo_control


def _needs(*clips: str) -> None:
    for name in clips:
        try:
            video.clip_path(name)
        except DataUnavailableError as exc:
            pytest.skip(str(exc))
    pytest.importorskip("av")


def test_train_and_evaluation_clips_never_mix() -> None:
    assert set(video.TRAIN_CLIPS).isdisjoint(video.EVAL_CLIPS)
    assert set(video.TRAIN_CLIPS) | set(video.EVAL_CLIPS) == set(video.CLIPS)


def test_clip_frames_decode_in_order_at_224() -> None:
    _needs("tree", "cup")
    tree = video.read_clip("tree")
    assert tree.shape == (68, 224, 224, 3)
    assert tree.dtype == np.uint8
    # A real clip moves a little between frames and a lot across the clip: consecutive frames are closer.
    diffs = np.abs(tree[1:].astype(np.int16) - tree[:-1]).mean(axis=(1, 2, 3))
    far = np.abs(tree[-1].astype(np.int16) - tree[0]).mean()
    assert float(np.median(diffs)) < far
    every_other = video.read_clip("tree", size=64, step=2, max_frames=10)
    assert every_other.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(every_other[1], video.read_clip("tree", size=64, max_frames=3)[2])
    # cup.mp4 ships gzipped: it is unpacked into the cache and decodes.
    cup = video.read_clip("cup", max_frames=5)
    assert video.clip_path("cup").suffix == ".mp4"
    assert cup.shape == (5, 224, 224, 3)


def test_unknown_clip_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        video.clip_path("nope")


def test_square_resize_keeps_the_centre() -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 200  # the centred 40x40 square
    out = video.square_resize(img, 16)
    assert out.shape == (16, 16, 3)
    assert int(out.min()) == 200


def _photos() -> list[LabelledPhoto]:
    rng = np.random.default_rng(0)
    # Smooth scenes (coarse random colours, upsampled), like photos rather than white noise.
    return [
        LabelledPhoto(
            f"p{i}", np.kron(rng.integers(0, 255, (6, 6, 3)), np.ones((16, 16, 1))).astype(np.uint8), label
        )
        for i, label in enumerate((3, 7, 11))
    ]


SMALL = PhotoMotion(size=32, hold_mean=8, enter=3)


def test_photo_camera_is_seeded_and_repeats_frames() -> None:
    one = list(photo_camera(_photos(), 120, SMALL, seed=2))
    two = list(photo_camera(_photos(), 120, SMALL, seed=2))
    other = list(photo_camera(_photos(), 120, SMALL, seed=3))
    assert len(one) == 120
    assert all(f.image.shape == (32, 32, 3) for f in one)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, two, strict=True))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(one, other, strict=True))
    # Objects enter and leave: some frames show no object (label -1), most show one.
    labels = np.array([f.label for f in one])
    assert (labels == -1).any()
    assert (labels >= 0).mean() > 0.5
    assert set(labels[labels >= 0]) <= {3, 7, 11}
    for f in one:
        assert (f.label >= 0) == (f.visible >= SMALL.min_visible)
        if f.label >= 0:
            assert f.label == _photos()[f.photo].label
    # Held scenes repeat: consecutive frames of one photo are far closer than frames of two photos.
    same = [
        np.abs(a.image.astype(np.int16) - b.image).mean()
        for a, b in itertools.pairwise(one)
        if a.photo == b.photo and min(a.visible, b.visible) > 0.999
    ]
    across = [
        np.abs(a.image.astype(np.int16) - b.image).mean()
        for a in one[:40]
        for b in one[:40]
        if a.photo != b.photo and min(a.visible, b.visible) > 0.999
    ]
    assert same
    assert across
    assert np.median(same) < 0.5 * np.median(across)


def test_photo_control_draws_independent_views() -> None:
    frames = list(photo_control(_photos(), 60, SMALL, seed=0))
    assert len(frames) == 60
    assert all(f.visible > 0.999 and f.label >= 0 for f in frames)
    pairs = [np.abs(a.image.astype(np.int16) - b.image).mean() for a, b in itertools.pairwise(frames)]
    cam = list(photo_camera(_photos(), 60, SMALL, seed=0))
    held = [
        np.abs(a.image.astype(np.int16) - b.image).mean()
        for a, b in itertools.pairwise(cam)
        if a.photo == b.photo and min(a.visible, b.visible) > 0.999
    ]
    assert np.median(pairs) > 2 * np.median(held)


def test_photo_camera_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        next(photo_camera([], 1))
    with pytest.raises(ConfigError):
        PhotoMotion(min_zoom=2.0, max_zoom=1.0)


def test_labelled_photos_split_into_disjoint_calibration_and_evaluation() -> None:
    try:
        photos = video.labelled_photos()
        names = video.imagenet_classes()
    except DataUnavailableError as exc:
        pytest.skip(str(exc))
    assert len(photos) == 20
    assert len(names) == 1000
    assert all(0 <= p.label < 1000 and p.pixels.shape[2] == 3 for p in photos)
    calibration, evaluation = video.photo_split(photos)
    assert len(calibration) == len(evaluation) == 10
    assert {p.name for p in calibration}.isdisjoint(p.name for p in evaluation)
    assert {p.name for p in calibration} | {p.name for p in evaluation} == {p.name for p in photos}
    # No pixels shared either (no photo is in both under another name).
    assert not any(np.array_equal(a.pixels, b.pixels) for a in calibration for b in evaluation)
