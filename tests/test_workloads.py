from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccied_p2p.errors import ConfigError
from ccied_p2p.workloads import (
    CameraParams,
    camera_stream,
    collect,
    control_stream,
    device_streams,
    perturb,
    shift_image,
    zipf_weights,
)


def _images(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    return images, labels


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    images, labels = _images()
    a = collect(camera_stream(images, labels, 300, seed=7))
    b = collect(camera_stream(images, labels, 300, seed=7))
    c = collect(camera_stream(images, labels, 300, seed=8))
    for i in range(len(a)):
        assert np.array_equal(a[i], b[i])
    assert not np.array_equal(a[0], c[0])


def test_items_are_perturbed_test_images_with_their_labels() -> None:
    images, labels = _images()
    params = CameraParams(pool_size=50)
    for item in camera_stream(images, labels, 200, params, seed=1):
        idx, image, label = item
        assert image.dtype == np.uint8
        assert image.shape == (28, 28)
        assert label == labels[idx]
        assert not np.array_equal(image, images[idx])  # every capture is perturbed


def test_pool_size_and_zipf_popularity() -> None:
    images, labels = _images()
    params = CameraParams(pool_size=100, zipf_s=1.0)
    idx, _, _ = collect(camera_stream(images, labels, 20000, params, seed=3))
    counts = sorted(Counter(idx.tolist()).values(), reverse=True)
    assert len(counts) <= 100
    expected = zipf_weights(100, 1.0)
    # The most popular image gets about p_1 = 1 / H_100 = 19% of requests; the tail gets far fewer.
    assert counts[0] / len(idx) == pytest.approx(expected[0], abs=0.02)
    assert counts[0] > 10 * counts[min(len(counts) - 1, 60)]


def test_zero_exponent_is_uniform() -> None:
    assert np.allclose(zipf_weights(5, 0.0), 0.2)
    assert zipf_weights(4, 2.0)[0] == pytest.approx(1 / (1 + 1 / 4 + 1 / 9 + 1 / 16))


def test_scene_drift_changes_what_is_popular() -> None:
    images, labels = _images()
    params = CameraParams(pool_size=200, scene_length=2000)
    idx, _, _ = collect(camera_stream(images, labels, 4000, params, seed=5))
    top_first = Counter(idx[:2000].tolist()).most_common(1)[0][0]
    top_second = Counter(idx[2000:].tolist()).most_common(1)[0][0]
    assert top_first != top_second


@given(
    dy=st.integers(-3, 3),
    dx=st.integers(-3, 3),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_integer_shift_is_a_translation(dy: int, dx: int, seed: int) -> None:
    img = np.random.default_rng(seed).random((10, 12)).astype(np.float32)
    out = shift_image(img, float(dy), float(dx))
    expected = np.zeros_like(img)
    h, w = img.shape
    expected[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    assert np.allclose(out, expected)


def test_subpixel_shift_interpolates_and_keeps_mass_inside() -> None:
    img = np.zeros((9, 9), np.float32)
    img[4, 4] = 1.0
    out = shift_image(img, 0.5, -0.25)
    assert out.sum() == pytest.approx(1.0)
    assert out[4, 4] == pytest.approx(0.5 * 0.75)
    assert out[5, 3] == pytest.approx(0.5 * 0.25)


def test_perturbation_is_bounded_by_its_parameters() -> None:
    rng = np.random.default_rng(0)
    img = np.full((28, 28), 100, np.uint8)
    quiet = CameraParams(max_shift=0.0, noise_std=0.0, brightness=0.0, contrast=0.0)
    assert np.array_equal(perturb(img, quiet, rng), img)
    exposure = CameraParams(max_shift=0.0, noise_std=0.0, brightness=8.0, contrast=0.1)
    for _ in range(50):
        out = perturb(img, exposure, rng).astype(int)
        assert np.all(out == out[0, 0])  # a uniform exposure change
        assert 100 * 0.9 - 8 - 1 <= out[0, 0] <= 100 * 1.1 + 8 + 1
    noisy = CameraParams(max_shift=0.0, noise_std=4.0, brightness=0.0, contrast=0.0)
    diff = perturb(img, noisy, rng).astype(float) - 100
    assert 3.0 < diff.std() < 5.0


@pytest.mark.parametrize(
    "kwargs",
    [{"pool_size": 0}, {"zipf_s": -1.0}, {"noise_std": -1.0}, {"contrast": 1.0}, {"scene_length": -1}],
)
def test_bad_params_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        CameraParams(**kwargs)  # type: ignore[arg-type]


def test_pool_larger_than_test_set_is_refused() -> None:
    images, labels = _images(20)
    with pytest.raises(ConfigError):
        list(camera_stream(images, labels, 5, CameraParams(pool_size=21)))
    with pytest.raises(ConfigError):
        list(camera_stream(images.astype(np.float32), labels, 5))


def test_control_stream_is_each_image_once_unperturbed() -> None:
    images, labels = _images(100)
    idx, imgs, labs = collect(control_stream(images, labels, seed=4))
    assert sorted(idx.tolist()) == list(range(100))
    assert np.array_equal(imgs, images[idx])
    assert np.array_equal(labs, labels[idx])
    in_order, _, _ = collect(control_stream(images, labels, limit=10))
    assert in_order.tolist() == list(range(10))


def test_control_stream_through_a_camera_is_each_image_once_perturbed() -> None:
    images, labels = _images(100)
    idx, imgs, labs = collect(control_stream(images, labels, seed=4, camera=CameraParams()))
    plain, _, _ = collect(control_stream(images, labels, seed=4))
    assert idx.tolist() == plain.tolist()  # the same order as without the camera
    assert np.array_equal(labs, labels[idx])
    assert all(not np.array_equal(imgs[k], images[i]) for k, i in enumerate(idx))
    again = collect(control_stream(images, labels, seed=4, camera=CameraParams()))[1]
    assert np.array_equal(again, imgs)
    unshuffled = [collect(control_stream(images, labels, camera=CameraParams()))[1] for _ in range(2)]
    assert np.array_equal(unshuffled[0], unshuffled[1])  # no seed: still the same stream every time
    other = collect(control_stream(images, labels, seed=5, camera=CameraParams()))
    assert not np.array_equal(other[1][np.argsort(other[0])], imgs[np.argsort(idx)])


def test_device_streams_are_non_iid_with_overlap() -> None:
    images, labels = _images(2000)
    params = CameraParams(pool_size=100)
    streams = device_streams(images, labels, 3, 1000, params, seed=2, classes_per_device=2, overlap=0.2)
    seen = []
    for d, stream in enumerate(streams):
        idx, _, labs = collect(stream)
        own = {(2 * d) % 10, (2 * d + 1) % 10}
        assert np.isin(labs, list(own)).mean() > 0.6
        seen.append(set(idx.tolist()))
    assert len(seen[0] & seen[1]) < 0.2 * len(seen[0])
    again = [collect(s)[0] for s in device_streams(images, labels, 3, 1000, params, seed=2)]
    assert [set(a.tolist()) for a in again] == seen


def test_real_fashion_stream(fashion: object) -> None:
    from ccied_p2p.datasets import Dataset

    assert isinstance(fashion, Dataset)
    images, labels = fashion.test_images, fashion.test_labels
    idx, imgs, labs = collect(camera_stream(images, labels, 500, seed=0))
    assert np.array_equal(labs, labels[idx])
    # Captures stay close to their source image: mean absolute difference of a few grey levels.
    diff = np.abs(imgs.astype(int) - images[idx].astype(int)).mean(axis=(1, 2))
    assert np.median(diff) < 30
