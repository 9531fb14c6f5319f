"""The cache's versioned file format: :func:`to_bytes`/:func:`from_bytes`, atomic :func:`save`, :func:`load`.

They are :class:`SemanticCache <ccied_p2p.cache.SemanticCache>` methods; the format is in docs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import numpy.typing as npt

from ccied_p2p.cache.arrays import FloatArray, KeyArray
from ccied_p2p.cache.eviction import EvictionPolicy
from ccied_p2p.cache.indexes import IndexFactory
from ccied_p2p.cache.reducers import FeatureReducer, make_reducer
from ccied_p2p.errors import (
    CodecError,
    ConfigError,
    MalformedError,
    TruncatedError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from ccied_p2p.cache.semantic import SemanticCache


FORMAT_VERSION = 1
"""Version of the :meth:`SemanticCache.save` file format."""

_MAGIC = b"CCIEDSC\x00"
_PREFIX = struct.Struct(">8sIQ")  # magic, format version, payload length
_DIGEST_SIZE = 32


def to_bytes(self: SemanticCache) -> bytes:
    """The whole cache in the versioned file format (see :meth:`save`)."""
    entries = sorted(self._entries.values(), key=lambda e: (e.last_used, e.key))
    policy = self.policy.snapshot()
    fps = sorted({e.fingerprint for e in entries})
    origins = sorted({e.origin for e in entries})
    fp_id = {fp: i for i, fp in enumerate(fps)}
    origin_id = {o: i for i, o in enumerate(origins)}
    dims = {fp: self._buckets[fp].index.ndim for fp in fps}
    buckets: list[dict[str, Any]] = []
    for fp in fps:
        mine = [e for e in entries if e.fingerprint == fp]
        index = self._buckets[fp].index
        buckets.append(
            {
                "fingerprint": fp,
                "dim": dims[fp],
                "keys": np.array([e.key for e in mine], dtype="<i8").tobytes(),
                "features": np.stack([e.feature for e in mine]).astype("<f4").tobytes(),
                "native": index.dump(),
            }
        )

    def col(values: list[Any], dtype: str) -> bytes:
        return np.array(values, dtype=dtype).tobytes()

    payload = {
        "format": FORMAT_VERSION,
        "node_id": self.node_id,
        "params": {
            "capacity": self.capacity,
            "threshold": self.threshold,
            "k": self.k,
            "votes": self.votes,
            "min_confidence": self.min_confidence,
            "radius": list(self.radius),
            "audit_from": self.audit_from,
            "index": self._index_kind,
            "eviction": self.policy.name,
            "window": self._recent.maxlen,
            "reducer": self.reducer.config(),
        },
        "state": {
            "next_key": self._next_key,
            "own_version": self._own_version,
            "version": self._version,
            "known": [[o, v] for o, v in sorted(self._known.items())],
        },
        "fingerprints": fps,
        "origins": origins,
        "buckets": buckets,
        "entries": {
            "n": len(entries),
            "key": col([e.key for e in entries], "<i8"),
            "label": col([e.label for e in entries], "<i8"),
            "confidence": col([e.confidence for e in entries], "<f8"),
            "fingerprint": col([fp_id[e.fingerprint] for e in entries], "<u4"),
            "origin": col([origin_id[e.origin] for e in entries], "<u4"),
            "version": col([e.version for e in entries], "<u8"),
            "created": col([e.created for e in entries], "<f8"),
            "last_used": col([e.last_used for e in entries], "<f8"),
            "uses": col([e.uses for e in entries], "<u8"),
            "disputed": col([e.disputed for e in entries], "u1"),
        },
        "policy": {
            "key": col([k for k, _ in policy], "<i8"),
            "tag": col([t for _, t in policy], "<i8"),
        },
    }
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    head = _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(body))
    digest = hashlib.blake2b(head + body, digest_size=_DIGEST_SIZE).digest()
    return head + body + digest


def save(self: SemanticCache, path: str | os.PathLike[str]) -> None:
    """Write the cache to ``path`` atomically: a temporary file in the same directory, fsync, rename.

    A crash at any point leaves either the previous file or the new one, never a mix. Format: an
    8-byte magic ``CCIEDSC\\0``, a big-endian u32 format version and u64 payload length, a msgpack
    payload (parameters, counters, per-entry columns as little-endian arrays, per-fingerprint float32
    features and usearch's own serialised index when there is one), then a 32-byte BLAKE2b of all of it.
    """
    target = Path(path)
    data = to_bytes(self)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load(
    cls: type[SemanticCache],
    path: str | os.PathLike[str],
    *,
    reducer: FeatureReducer | None = None,
    index: str | IndexFactory | None = None,
    eviction: str | EvictionPolicy | None = None,
) -> SemanticCache:
    """A cache from a :meth:`save` file; a corrupt file raises a :class:`~ccied_p2p.errors.CodecError`."""
    return from_bytes(cls, Path(path).read_bytes(), reducer=reducer, index=index, eviction=eviction)


def from_bytes(
    cls: type[SemanticCache],
    data: bytes,
    *,
    reducer: FeatureReducer | None = None,
    index: str | IndexFactory | None = None,
    eviction: str | EvictionPolicy | None = None,
) -> SemanticCache:
    """Inverse of :meth:`to_bytes`."""
    if len(data) < _PREFIX.size + _DIGEST_SIZE:
        raise TruncatedError(f"cache file of {len(data)} bytes is shorter than its header")
    magic, fmt, length = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise UnsupportedError("not a ccied-p2p cache file")
    if fmt != FORMAT_VERSION:
        raise UnsupportedError(f"cache file format {fmt}, this version reads {FORMAT_VERSION}")
    end = _PREFIX.size + length
    if len(data) < end + _DIGEST_SIZE:
        raise TruncatedError(f"cache file declares {length} payload bytes, has {len(data) - _PREFIX.size}")
    if len(data) > end + _DIGEST_SIZE:
        raise MalformedError("trailing bytes after the cache file digest")
    if hashlib.blake2b(data[:end], digest_size=_DIGEST_SIZE).digest() != data[end:]:
        raise MalformedError("cache file digest mismatch (corrupt or partly written)")
    try:
        payload = msgpack.unpackb(data[_PREFIX.size : end], raw=False)
        return _from_payload(cls, payload, reducer, index, eviction)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, msgpack.UnpackException) as exc:
        raise MalformedError(f"cache file payload is malformed: {exc}") from exc


def _from_payload(
    cls: type[SemanticCache],
    p: dict[str, Any],
    reducer: FeatureReducer | None,
    index: str | IndexFactory | None,
    eviction: str | EvictionPolicy | None,
) -> SemanticCache:
    if p["format"] != FORMAT_VERSION:
        raise UnsupportedError(f"cache payload format {p['format']}")
    params = p["params"]
    try:
        cache = cls(
            bytes(p["node_id"]),
            capacity=int(params["capacity"]),
            threshold=float(params["threshold"]),
            k=int(params["k"]),
            votes=int(params["votes"]),
            min_confidence=float(params["min_confidence"]),
            radius=params.get("radius", (0.0, 0.0)),  # files written before it: the whole threshold
            audit_from=int(params["audit_from"]),
            reducer=reducer or make_reducer(params["reducer"]),
            index=index if index is not None else str(params["index"]),
            eviction=eviction if eviction is not None else str(params["eviction"]),
            window=int(params["window"]),
        )
    except ConfigError as exc:
        raise MalformedError(f"cache file parameters: {exc}") from exc
    cols = p["entries"]
    n = int(cols["n"])

    def col(name: str, dtype: str) -> npt.NDArray[Any]:
        arr = np.frombuffer(cols[name], dtype=dtype)
        if arr.shape != (n,):
            raise MalformedError(f"column {name!r} has {arr.size} values, expected {n}")
        return arr

    keys = col("key", "<i8").tolist()
    labels = col("label", "<i8").tolist()
    confs = col("confidence", "<f8").tolist()
    fp_ids = col("fingerprint", "<u4").tolist()
    origin_ids = col("origin", "<u4").tolist()
    versions = col("version", "<u8").tolist()
    created = col("created", "<f8").tolist()
    last_used = col("last_used", "<f8").tolist()
    uses = col("uses", "<u8").tolist()
    disputed = col("disputed", "u1").tolist()
    fps = [str(f) for f in p["fingerprints"]]
    origins = [bytes(o) for o in p["origins"]]
    features: dict[int, FloatArray] = {}
    natives: dict[str, tuple[bytes, KeyArray]] = {}
    for b in p["buckets"]:
        dim = int(b["dim"])
        bkeys = np.frombuffer(b["keys"], dtype="<i8").astype(np.int64)
        raw = np.frombuffer(b["features"], dtype="<f4")
        if dim < 1 or raw.size != dim * len(bkeys):
            raise MalformedError("bucket feature array does not match its keys")
        mat = raw.reshape(len(bkeys), dim).astype(np.float32)
        for key, row in zip(bkeys.tolist(), mat, strict=True):
            features[key] = row
        if b["native"] is not None:
            natives[str(b["fingerprint"])] = (bytes(b["native"]), bkeys)
    if len(features) != n or set(features) != set(keys):
        raise MalformedError("entry keys and feature keys differ")
    if len(set(keys)) != n or n > cache.capacity or any(k < 1 for k in keys):
        raise MalformedError("duplicate, invalid or too many entry keys")
    by_fp: dict[str, list[int]] = {}
    for i in range(n):
        fp = fps[fp_ids[i]]
        key = keys[i]
        cache._next_key = key
        cache._add(
            features[key],
            labels[i],
            confs[i],
            fp,
            origins[origin_ids[i]],
            versions[i],
            created[i],
            last_used[i],
            uses=uses[i],
            index=False,
        )
        cache._entries[key].disputed = bool(disputed[i])
        by_fp.setdefault(fp, []).append(key)
    for fp, fkeys in by_fp.items():
        bucket = cache._buckets[fp]
        karr = np.array(fkeys, dtype=np.int64)
        native = natives.get(fp)
        if native is None or not bucket.index.restore(native[0], karr):
            bucket.index.add_many(karr, np.stack([features[k] for k in fkeys]))
    snap_keys = np.frombuffer(p["policy"]["key"], dtype="<i8").tolist()
    snap_tags = np.frombuffer(p["policy"]["tag"], dtype="<i8").tolist()
    if len(snap_keys) != n or len(snap_tags) != n or set(snap_keys) != set(keys):
        raise MalformedError("eviction state does not match the entries")
    if cache.policy.name == params["eviction"]:
        cache.policy.restore(zip(snap_keys, snap_tags, strict=True))
    # else: another policy was asked for; it starts from the entries in last-use order.
    state = p["state"]
    cache._next_key = max(int(state["next_key"]), max(keys, default=0) + 1)
    cache._own_version = int(state["own_version"])
    cache._version = int(state["version"])
    cache._known = {bytes(o): int(v) for o, v in state["known"]}
    return cache
