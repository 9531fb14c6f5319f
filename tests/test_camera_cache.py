"""The camera-cache bench's exact binomial bound, and its calibration data kept apart from what it measures."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from ccied_p2p.bench.camera_cache import clopper_pearson_upper


def test_clopper_pearson_upper_bound() -> None:
    # With no failure the bound is 1 - 0.05**(1/n): 299 clean hits are the fewest under 1%.
    assert clopper_pearson_upper(0, 299) <= 0.01 < clopper_pearson_upper(0, 298)
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(5, 100) == pytest.approx(0.1023, abs=1e-3)
    assert clopper_pearson_upper(1, 500) > 1 / 500


def test_bench_cache_accepts_the_camera_workloads() -> None:
    from ccied_p2p.cli import build_parser

    for workload in ("photo-camera", "video"):
        args = build_parser().parse_args(["bench", "cache", "--workload", workload, "--json"])
        assert isinstance(args, argparse.Namespace)
        assert args.workload == workload


def test_wire_values_match_the_dense_i4_codec() -> None:
    import numpy as np
    import torch

    from ccied_p2p.bench.camera_cache import wire_values
    from ccied_p2p.codec.tensor import decode_tensor, encode_tensor
    from ccied_p2p.lite import WIRE_ENCODING

    rng = np.random.default_rng(0)
    h = rng.normal(0, 3, size=(1, 5, 4, 4)).astype(np.float32)
    h[0, 2] = 0.0  # an all-zero channel stays zero
    ours = wire_values(torch.from_numpy(h)).numpy()
    theirs = decode_tensor(encode_tensor(h, WIRE_ENCODING))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert len(np.unique(ours[0, 0])) <= 15  # 4-bit values: at most 15 levels a channel
    assert not np.allclose(ours, h)


def test_camera_workloads_default_to_the_unpruned_split() -> None:
    from ccied_p2p.bench.cache import _defaults
    from ccied_p2p.cli import build_parser

    parse = build_parser().parse_args
    camera = parse(["bench", "cache", "--workload", "photo-camera"])
    _defaults(camera)
    assert (camera.amount, camera.requests, camera.budget) == (0.0, 1500, None)
    pruned = parse(["bench", "cache", "--workload", "video", "--amount", "0.65"])
    _defaults(pruned)
    assert pruned.amount == 0.65
    fashion = parse(["bench", "cache"])
    _defaults(fashion)
    assert (fashion.amount, fashion.requests, fashion.budget) == (0.75, 5000, 0.01)


def test_part_of_splits_a_stream_by_photo_parity_in_order() -> None:
    import numpy as np

    from ccied_p2p.bench.camera_cache import part_of

    idx = np.array([0, 0, 1, 2, 3, 3, 4])
    stream = (
        {"key": np.arange(14, dtype=np.float32).reshape(7, 2)},
        np.arange(7, dtype=np.int64) + 10,
        np.linspace(0, 1, 7).astype(np.float32),
        np.arange(7, dtype=np.int64),
        idx,
    )
    even, odd = part_of(stream, 0), part_of(stream, 1)
    assert even[4].tolist() == [0, 0, 2, 4]
    assert odd[4].tolist() == [1, 3, 3]
    assert even[1].tolist() == [10, 11, 13, 16]
    assert odd[3].tolist() == [2, 4, 5]
    assert even[0]["key"][:, 0].tolist() == [0, 2, 6, 12]
    assert len(even[2]) + len(odd[2]) == 7


def test_a_node_gets_the_key_the_camera_bench_calibrates() -> None:
    from ccied_p2p.cache import GridPool, reducer_for

    # Lite0's split after _blocks.5 (80x14x14): the 2x2 grid, 320 values, for the node and the bench alike.
    key = reducer_for((80, 14, 14))
    assert isinstance(key, GridPool)
    assert key.grid == 2
    assert key(np.ones((1, 80, 14, 14), dtype=np.float32)).shape == (1, 320)


@pytest.mark.slow
def test_calibrate_camera_is_the_bench_calibration_in_one_call() -> None:
    from ccied_p2p.bench.camera_cache import KV, RADIUS, calibrate_camera, camera_key
    from ccied_p2p.errors import DataUnavailableError
    from ccied_p2p.lite import lite0_split
    from ccied_p2p.presets import CacheSettings

    try:
        split = lite0_split(prune=False)
        cam = calibrate_camera(split, 6, seeds=(100, 101))
    except DataUnavailableError as exc:
        pytest.skip(str(exc))
    assert cam.reducer.config() == camera_key(split).config()
    assert cam.reference == "the tail on 4-bit wire values (dense-i4-deflate)"
    assert "2 photo-camera streams of 6 frames over the calibration photos" in cam.data
    c = cam.calibration
    assert c.held_out  # chosen on the even calibration photos, tested on the odd ones
    assert c.in_sample_requests + c.requests == 12
    assert c.threshold < 0  # a dozen frames certify nothing: the cache never answers
    assert cam.settings == CacheSettings(c.threshold, c.k, c.votes, c.min_confidence, RADIUS)
    assert (c.k, c.votes) in KV or c.threshold < 0


def test_the_radius_reaches_a_node_from_settings_and_the_command_line() -> None:
    from ccied_p2p.cache import SemanticCache
    from ccied_p2p.cli import _node_config, build_parser
    from ccied_p2p.errors import ConfigError
    from ccied_p2p.presets import CacheSettings
    from ccied_p2p.runtime.config import CacheConfig

    settings = CacheSettings(0.2, 5, 5, 0.8, (0.7, 0.97))
    cache = SemanticCache(b"n")
    settings.apply(cache)
    assert cache.radius == (0.7, 0.97)
    args = build_parser().parse_args(["serve", "--insecure", *settings.as_args()])
    assert _node_config(args).cache.radius == (0.7, 0.97)
    with pytest.raises(ConfigError):
        CacheConfig(radius=(0.97, 0.7)).validate()
