"""The virtual camera: seeded, real offline photos, holds and moves, sensor noise, JPEG and scaling helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ccied_p2p.camera import (
    CameraMotion,
    Photo,
    View,
    jpeg_decode,
    jpeg_encode,
    normalize,
    render,
    sample_photos,
    virtual_camera,
)
from ccied_p2p.errors import ConfigError


def _photos() -> list[Photo]:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:120, 0:160]
    grad = np.stack([xs * 1.5, ys * 2.0, (xs + ys) * 0.8], axis=-1)
    a = np.clip(grad + rng.normal(0, 5, grad.shape), 0, 255).astype(np.uint8)
    b = np.clip(255 - grad, 0, 255).astype(np.uint8)
    return [Photo("a", a), Photo("b", b)]


SMALL = CameraMotion(size=32)


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    one = list(virtual_camera(_photos(), 40, SMALL, seed=3))
    two = list(virtual_camera(_photos(), 40, SMALL, seed=3))
    other = list(virtual_camera(_photos(), 40, SMALL, seed=4))
    assert len(one) == 40
    assert all(np.array_equal(f.image, g.image) and f.view == g.view for f, g in zip(one, two, strict=True))
    assert any(not np.array_equal(f.image, g.image) for f, g in zip(one, other, strict=True))
    assert [f.number for f in one] == list(range(40))
    assert all(f.image.shape == (32, 32, 3) and f.image.dtype == np.uint8 for f in one)


def test_holds_moves_and_cuts() -> None:
    frames = list(virtual_camera(_photos(), 400, CameraMotion(size=24, switch=0.5), seed=1))
    held = [(a, b) for a, b in itertools.pairwise(frames) if not a.moving and not b.moving]
    # A held view stays put: consecutive frames at rest differ only by sensor noise.
    same_view = [a.view == b.view for a, b in held]
    assert sum(same_view) > len(held) // 2
    assert any(f.moving for f in frames)
    assert {f.view.photo for f in frames} == {0, 1}
    for a, b in itertools.pairwise(frames):
        if a.view == b.view:
            diff = np.abs(a.image.astype(int) - b.image.astype(int))
            assert diff.mean() < 12  # noise (2 grey levels) and exposure (3%) only
    zooms = [f.view.zoom for f in frames]
    assert min(zooms) >= 1.0
    assert max(zooms) <= 2.5


def test_views_stay_inside_the_photo() -> None:
    photo = _photos()[0].pixels
    corner = render(photo, View(0, -1000.0, -1000.0, 2.0), 16)
    assert corner.shape == (16, 16, 3)
    # Clamped to the top-left corner: the same as asking for exactly that corner.
    half = min(photo.shape[:2]) / 2.0 / 2
    assert np.array_equal(corner, render(photo, View(0, half, half, 2.0), 16))
    for f in virtual_camera(_photos(), 60, SMALL, seed=2):
        h, w = _photos()[f.view.photo].pixels.shape[:2]
        half = min(h, w) / f.view.zoom / 2
        assert half - 1e-6 <= f.view.cx <= w - half + 1e-6
        assert half - 1e-6 <= f.view.cy <= h - half + 1e-6


def test_jpeg_round_trip_and_normalize() -> None:
    frame = next(virtual_camera(_photos(), 1, CameraMotion(size=64), seed=0)).image
    data = jpeg_encode(frame, 90)
    assert data[:2] == b"\xff\xd8"
    back = jpeg_decode(data)
    assert back.shape == frame.shape
    assert np.abs(back.astype(int) - frame.astype(int)).mean() < 6
    assert len(jpeg_encode(frame, 30)) < len(data)
    x = normalize(frame)
    assert x.shape == (1, 3, 64, 64)
    assert x.dtype == np.float32
    assert x.min() >= -1.0
    assert x.max() <= 1.0
    assert normalize(np.zeros((2, 4, 4, 3), np.uint8)).min() == -1.0
    with pytest.raises(ConfigError):
        normalize(np.zeros((4, 4), np.uint8))


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        CameraMotion(min_zoom=0.5)
    with pytest.raises(ConfigError):
        CameraMotion(move_min=5, move_max=2)
    with pytest.raises(ConfigError):
        CameraMotion(switch=1.5)
    with pytest.raises(ConfigError):
        list(virtual_camera([], 3))
    with pytest.raises(ConfigError):
        list(virtual_camera([Photo("grey", np.zeros((50, 50), np.uint8))], 3))


def test_real_sample_photos_load_offline() -> None:
    photos = sample_photos()
    assert len(photos) >= 2
    assert photos[0].name.startswith("sklearn:")
    for p in photos:
        assert p.pixels.dtype == np.uint8
        assert p.pixels.ndim == 3
        assert p.pixels.shape[2] == 3
        assert min(p.pixels.shape[:2]) >= 256
    frames = list(virtual_camera(photos[:2], 3, seed=0))
    assert frames[0].image.shape == (224, 224, 3)
