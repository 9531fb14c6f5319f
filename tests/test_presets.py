from __future__ import annotations

import numpy as np
import pytest
import torch

from ccied_p2p import datasets
from ccied_p2p.cache import GlobalAvgPool, GridPool
from ccied_p2p.errors import ConfigError
from ccied_p2p.presets import calibrate, calibration_images, calibration_split, reducer_for
from ccied_p2p.split import SplitModel


def test_grid_follows_the_shape_and_the_mask_only_shortens_the_key() -> None:
    rng = np.random.default_rng(0)
    act = rng.random((4, 64, 7, 7)).astype(np.float32)
    act[:, 16:] = 0.0  # 75% of the channels pruned
    mask = torch.zeros(64, dtype=torch.bool)
    mask[:16] = True
    full, live = reducer_for((64, 7, 7)), reducer_for((64, 7, 7), mask)
    assert isinstance(full, GridPool)
    assert isinstance(live, GridPool)
    a, b = full(act), live(act)
    assert a.shape == (4, 256)
    assert b.shape == (4, 64)
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-5)  # same cosine geometry: one threshold fits both


def test_narrow_splits_get_a_finer_grid() -> None:
    r = reducer_for((6, 14, 14))
    assert isinstance(r, GridPool)
    assert r.grid == 4
    assert isinstance(reducer_for((1280,)), GlobalAvgPool)
    assert isinstance(reducer_for((512, 7, 7)), GlobalAvgPool)


def test_calibration_adds_a_stream_where_nothing_repeats(data: datasets.Dataset, split: SplitModel) -> None:
    settings, cal = calibrate(split, data, requests=600, max_false_hit_rate=0.05)
    assert cal.requests == 1200 + 200  # held out: six camera streams of 200, then 200 images once each
    assert cal.held_out
    assert cal.in_sample_requests == 600 + 200
    assert cal.false_hit_bound <= 0.05
    assert settings.threshold == cal.threshold
    _, cameras_only = calibrate(split, data, requests=600, max_false_hit_rate=0.05, novel=0)
    assert cameras_only.requests == 1200


def test_calibration_never_sees_the_images_it_is_measured_on(
    data: datasets.Dataset, split: SplitModel
) -> None:
    calib, measured = calibration_split(data)
    assert len(np.intersect1d(calib, measured)) == 0
    assert len(calib) + len(measured) == len(data.test_images)
    # Blank every image outside the calibration half: the calibration cannot tell.
    blanked = data.test_images.copy()
    blanked[measured] = 0
    other = datasets.from_arrays(
        data.name,
        blanked,
        data.test_labels,
        data.train_images,
        data.train_labels,
        mean=data.mean,
        std=data.std,
    )
    first = calibrate(split, data, requests=450, max_false_hit_rate=0.05, calibration=calib)
    again = calibrate(split, other, requests=450, max_false_hit_rate=0.05, calibration=calib)
    default = calibrate(split, other, requests=450, max_false_hit_rate=0.05)  # the same half by default
    assert first == again == default
    _, cal = first
    assert cal.held_out
    assert cal.requests == 900 + 150  # the held-out half: six cameras of 150, then 150 images once each
    assert cal.in_sample_requests == 600
    assert cal.threshold < 0 or cal.false_hit_bound <= 0.05
    np.testing.assert_array_equal(calibration_images(data, calib), data.test_images[calib])
    np.testing.assert_array_equal(calibration_images(data, "train"), data.train_images)
    with pytest.raises(ConfigError):
        calibration_images(data, np.array([0, 0]))
    with pytest.raises(ConfigError):
        calibration_images(data, np.zeros((3, 4)))
