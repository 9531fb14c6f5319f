from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccied_p2p import cache as cache_module
from ccied_p2p.cache import FORMAT_VERSION, GridPool, Hit, SemanticCache
from ccied_p2p.codec.messages import CacheEntry
from ccied_p2p.errors import CodecError, MalformedError, TruncatedError, UnsupportedError

FP = "a" * 16
OTHER = "b" * 16


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, d)).astype(np.float32) + 0.01
    unit: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _filled(n: int = 50, index: str = "auto", eviction: str = "slru", seed: int = 0) -> SemanticCache:
    c = SemanticCache(
        b"n" * 16,
        capacity=40,
        threshold=1e-4,
        k=1,
        votes=1,
        radius=(0.6, 0.95),
        index=index,
        eviction=eviction,
    )
    for i, v in enumerate(_vectors(n, seed=seed)):
        c.insert(v, i % 10, 0.5 + (i % 5) / 10, FP if i % 4 else OTHER, float(i))
        if i % 7 == 0:
            c.lookup(v, FP if i % 4 else OTHER, float(i) + 0.5)
    c.merge(
        [CacheEntry(_vectors(1, seed=99)[0], 3, 0.9, FP, b"p" * 16, 12, 1.0)],
        FP,
        60.0,
    )
    return c


def _answers(c: SemanticCache, vecs: np.ndarray) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for v in vecs:
        for fp in (FP, OTHER):
            r = c.lookup(v, fp, 1000.0)
            out.append((fp, r.label if isinstance(r, Hit) else None))
    return out


@pytest.mark.parametrize("index", ["numpy", "usearch", "auto"])
@pytest.mark.parametrize("eviction", ["lru", "lfu", "slru"])
def test_round_trip_keeps_everything(tmp_path: Path, index: str, eviction: str) -> None:
    c = _filled(index=index, eviction=eviction)
    path = tmp_path / "cache.bin"
    c.save(path)
    d = SemanticCache.load(path)
    assert len(d) == len(c) == 40
    assert (d.threshold, d.k, d.votes, d.capacity, d.policy.name) == (c.threshold, c.k, c.votes, 40, eviction)
    assert d.radius == c.radius
    assert d.node_id == c.node_id
    assert d.known() == c.known()
    assert d.version == c.version
    for fp in (FP, OTHER):
        assert d.summary(fp).digest == c.summary(fp).digest
        assert d.summary(fp).label_counts == c.summary(fp).label_counts
    got = {(e.origin, e.version): e for e in d.entries_since({}, 10**9)}
    want = {(e.origin, e.version): e for e in c.entries_since({}, 10**9)}
    assert got.keys() == want.keys()
    for key, e in want.items():
        assert np.array_equal(got[key].feature, e.feature)
        assert (got[key].label, got[key].confidence, got[key].created) == (e.label, e.confidence, e.created)
    vecs = _vectors(50)
    # Same eviction order afterwards: insert more into both and compare what still answers.
    for i, v in enumerate(_vectors(15, seed=7)):
        c.insert(v, 1, 0.9, FP, 2000.0 + i)
        d.insert(v, 1, 0.9, FP, 2000.0 + i)
    assert _answers(d, vecs) == _answers(c, vecs)
    assert d.known() == c.known()


def test_usearch_native_index_is_restored_not_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = SemanticCache(b"n", index="usearch", threshold=1e-4, k=1, votes=1)
    vecs = _vectors(300)
    for i, v in enumerate(vecs):
        c.insert(v, i % 10, 0.9, FP, 0.0)
    c.save(tmp_path / "c.bin")

    def no_rebuild(self: object, keys: object, vectors: object) -> None:
        raise AssertionError("rebuilt instead of restored")

    monkeypatch.setattr(cache_module.USearchIndex, "add_many", no_rebuild)
    d = SemanticCache.load(tmp_path / "c.bin")
    assert d.index_backend(FP) == "usearch"
    assert all(isinstance(d.lookup(v, FP, 1.0), Hit) for v in vecs[:20])


def test_disputed_flags_survive_a_restart(tmp_path: Path) -> None:
    v = _vectors(1)[0]
    c = SemanticCache(b"n", threshold=0.01, k=1, votes=1, audit_from=1, index="numpy")
    c.insert(v, 1, 0.9, FP, 0.0)
    r = c.lookup(v, FP, 1.0)
    assert isinstance(r, Hit)
    c.verify(_vectors(1, seed=3)[0], r, 2, 0.9, FP, 1.0)
    c.save(tmp_path / "c.bin")
    d = SemanticCache.load(tmp_path / "c.bin")
    assert not isinstance(d.lookup(v, FP, 2.0), Hit)
    assert d.audit_from == 1


def test_reducer_is_saved(tmp_path: Path) -> None:
    c = SemanticCache(b"n", k=1, votes=1, reducer=GridPool(2, channels=[0, 2]))
    act = np.random.default_rng(0).random((1, 3, 4, 4)).astype(np.float32)
    c.insert(act, 1, 0.9, FP, 0.0)
    c.save(tmp_path / "c.bin")
    d = SemanticCache.load(tmp_path / "c.bin")
    assert isinstance(d.reducer, GridPool)
    assert d.reducer.config() == c.reducer.config()
    assert isinstance(d.lookup(act, FP, 0.0), Hit)


def test_empty_cache_round_trips(tmp_path: Path) -> None:
    SemanticCache(b"n").save(tmp_path / "c.bin")
    d = SemanticCache.load(tmp_path / "c.bin")
    assert len(d) == 0
    assert d.summary().entries == 0


def test_crash_at_rename_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.bin"
    old = _filled(seed=1)
    old.save(path)
    before = path.read_bytes()
    new = _filled(seed=2)

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["cache.bin"]  # no temporary left behind
    assert SemanticCache.load(path).summary(FP).digest == old.summary(FP).digest


def test_crash_mid_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.bin"
    old = _filled(seed=1)
    old.save(path)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fh: object) -> None:
            self.fh = fh

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()  # type: ignore[attr-defined]

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])  # type: ignore[attr-defined]
            self.fh.flush()  # type: ignore[attr-defined]
            raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full"):
        _filled(seed=2).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["cache.bin"]
    assert SemanticCache.load(path).summary(FP).digest == old.summary(FP).digest


def test_half_written_file_is_detected(tmp_path: Path) -> None:
    data = _filled().to_bytes()
    (tmp_path / "c.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedError):
        SemanticCache.load(tmp_path / "c.bin")


def test_bad_files_raise_codec_errors() -> None:
    data = _filled().to_bytes()
    with pytest.raises(TruncatedError):
        SemanticCache.from_bytes(data[:10])
    with pytest.raises(UnsupportedError):
        SemanticCache.from_bytes(b"NOTCACHE" + data[8:])
    newer = data[:8] + struct.pack(">I", FORMAT_VERSION + 1) + data[12:]
    with pytest.raises(UnsupportedError):
        SemanticCache.from_bytes(newer)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(MalformedError):
        SemanticCache.from_bytes(bytes(flipped))
    with pytest.raises(MalformedError):
        SemanticCache.from_bytes(data + b"\x00")


def test_consistent_digest_but_bad_payload_is_malformed() -> None:
    import hashlib

    import msgpack

    def sealed(payload: object) -> bytes:
        body: bytes = msgpack.packb(payload, use_bin_type=True)
        head = struct.pack(">8sIQ", b"CCIEDSC\x00", FORMAT_VERSION, len(body))
        return head + body + hashlib.blake2b(head + body, digest_size=32).digest()

    good = msgpack.unpackb(_filled().to_bytes()[20:-32])
    mutations: tuple[Callable[[Any], object], ...] = (
        lambda p: p.pop("entries"),
        lambda p: p["entries"].update(n=p["entries"]["n"] + 1),
        lambda p: p["entries"].update(label=b"\x00" * 3),
        lambda p: p["params"].update(k=0),
        lambda p: p["params"].update(reducer={"name": "x"}),
        lambda p: p["buckets"][0].update(dim=3),
        lambda p: p.update(format=99),
    )
    for mutate in mutations:
        payload = msgpack.unpackb(msgpack.packb(good))
        mutate(payload)
        with pytest.raises(CodecError):
            SemanticCache.from_bytes(sealed(payload))
    with pytest.raises(CodecError):
        SemanticCache.from_bytes(sealed([1, 2, 3]))


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_files_only_raise_codec_errors(data: st.DataObject) -> None:
    blob = bytearray(_BLOB)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    with contextlib.suppress(CodecError):
        SemanticCache.from_bytes(bytes(blob[:cut]))


_BLOB = _filled(n=12).to_bytes()
