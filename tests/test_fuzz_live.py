"""Random, truncated and mutated frames against a live node, while a good peer keeps getting correct answers.

Attackers use real WebSockets to the node's real port. Without the secret: garbage before, during and after
the hello. With the secret (the test holds it): the real handshake, then mutated messages sealed with the
session key (they pass the MAC and reach the decoder and the node's handlers), raw unsealed frames, tampered
and replayed seals, text frames and an oversized frame. The node must close what it cannot trust, answer
what is valid, and keep serving the good peer throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import numpy as np
import pytest

from ccied_p2p import datasets
from ccied_p2p.codec.auth import Role, new_nonce
from ccied_p2p.codec.messages import (
    Ack,
    Auth,
    CacheEntries,
    CacheEntry,
    CacheSummary,
    CacheSync,
    ErrorMessage,
    Gossip,
    Hello,
    InferRequest,
    InferResponse,
    Leave,
    LoadReport,
    MemberState,
    MemberUpdate,
    Message,
    Ping,
    PingReq,
)
from ccied_p2p.codec.tensor import DEFAULT_LIMITS
from ccied_p2p.codec.wire import HEADER_SIZE, decode_message, encode_message
from ccied_p2p.errors import CodecError
from ccied_p2p.runtime.config import CacheConfig, NetworkConfig
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH, handshake
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

pytestmark = pytest.mark.network

SECRET = "fuzz-secret-0123456789"
SEED = 20_251_127


def _corpus(split: SplitModel, data: datasets.Dataset, target: bytes, feature_dim: int) -> list[Message]:
    """One or more valid messages of every type, some of them hostile but well-formed."""
    fp = split.fingerprint
    act = split.head(data.test_x[:2]).numpy()
    rng = np.random.default_rng(SEED)
    feature = rng.random(feature_dim, dtype=np.float32)
    other = os.urandom(16)
    member = MemberUpdate(
        other,
        "ghost",
        "127.0.0.1",
        1,
        fp,
        MemberState.ALIVE,
        0,
        LoadReport(1, 0, 1.0, 0.0),
        CacheSummary(1, 3, b"\x00" * 8, 0.5, {1: 2}),
    )
    return [
        Hello(os.urandom(16), "x", fp, PROTOCOL_VERSION, new_nonce(), 1),
        Auth(os.urandom(32)),
        InferRequest(1, fp, split.split_at, act[:1], "sparse-f16-lz4"),
        InferRequest(2, fp, split.split_at, act, "dense-f32"),
        InferRequest(3, fp, split.split_at, act[:1, :, :5], "dense-f32"),  # wrong shape: refused politely
        InferRequest(4, "0" * 64, split.split_at, act[:1], "dense-f32"),  # wrong fingerprint
        InferResponse(77, (3,), (0.9,), {"tail": 0.001}),  # an answer nobody asked for
        ErrorMessage(0, "x", "y"),
        Ping(1, (member,)),
        PingReq(2, other, (member,)),
        Ack(3, other, ()),
        Gossip((member,)),
        Gossip((MemberUpdate(target, "srv", "127.0.0.1", 1, fp, MemberState.DEAD, (1 << 64) - 1),)),
        Gossip((MemberUpdate(target, "srv", "127.0.0.1", 1, fp, MemberState.SUSPECT, 5),)),
        Leave(target, 3),  # "you left", told to the node itself
        Leave(other, 0),
        CacheSync(((other, 1),), 1 << 20),
        CacheEntries((CacheEntry(feature, 1, 0.9, fp, other, 1, 0.0),)),
        CacheEntries((CacheEntry(feature[:5], 1, 0.9, fp, other, 2, 0.0),)),  # wrong dimension
        CacheEntries((CacheEntry(np.zeros(feature_dim, np.float32), -1, 2.0, fp, other, 3, 0.0),)),
    ]


Mutator = Callable[[random.Random, bytes], bytes]


def _flip(rng: random.Random, b: bytes) -> bytes:
    out = bytearray(b)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def _truncate(rng: random.Random, b: bytes) -> bytes:
    return b[: rng.randrange(len(b))] if b else b


def _extend(rng: random.Random, b: bytes) -> bytes:
    return b + rng.randbytes(rng.randint(1, 64))


def _splice(rng: random.Random, b: bytes) -> bytes:
    at = rng.randrange(len(b) + 1)
    return b[:at] + rng.randbytes(rng.randint(1, 32)) + b[at + rng.randint(0, 16) :]


def _header(rng: random.Random, b: bytes) -> bytes:
    if len(b) < HEADER_SIZE:
        return b
    version = rng.choice([1, 0, 2, 255])
    mtype = rng.choice([b[1], 0, 15, 99, 255])
    count = rng.choice([0, 1, 2, 0xFFFF])
    meta = rng.choice([0, 1, len(b), 0xFFFFFFFF, (1 << 20) + 1])
    return struct.pack("<BBHI", version, mtype, count, meta) + b[HEADER_SIZE:]


def _junk(rng: random.Random, b: bytes) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 8, 64, 1000]))


MUTATORS: tuple[Mutator, ...] = (_flip, _truncate, _extend, _splice, _header, _junk)

CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


async def _outcome(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.5) -> str:
    """``closed`` if the node closed the connection, else ``open`` (after answering or ignoring)."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open"
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return "open"
        except (aiohttp.ClientError, ConnectionError):
            return "closed"
        if msg.type in CLOSED:
            return "closed"


async def test_fuzzed_frames_never_stop_the_node_serving_a_good_peer(
    split: SplitModel, data: datasets.Dataset
) -> None:
    rng = random.Random(SEED)
    config = NodeConfig(name="srv", secret=SECRET, network=NetworkConfig(mdns=False, heartbeat=2.0))
    async with (
        Node(split, config) as srv,
        Node(
            split,
            NodeConfig(
                name="good",
                secret=SECRET,
                network=NetworkConfig(mdns=False, seeds=[srv.address]),
                cache=CacheConfig(enabled=False),
            ),
        ) as good,
    ):
        await until(lambda: bool(good.links))
        good.config.strategy.local_tail_ms = (
            1000.0  # the good peer's own tail looks slow: every request goes to srv
        )
        x = data.test_x[:200]
        want = split(x).argmax(1).tolist()
        probe = srv.cache.features(split.head(x[:1]).numpy())
        corpus = _corpus(split, data, srv.node_id, int(np.asarray(probe).shape[-1]))
        frames = [encode_message(m) for m in corpus]
        for frame, msg in zip(frames, corpus, strict=True):  # the corpus itself is valid
            assert type(decode_message(frame)) is type(msg)

        stop = asyncio.Event()
        answers: list[tuple[int, InferenceResult]] = []

        async def good_client() -> None:
            i = 0
            while not stop.is_set():
                r = await good.infer(x[i % len(x)])
                assert isinstance(r, InferenceResult)
                answers.append((i % len(x), r))
                i += 1

        outcomes: Counter[str] = Counter()
        url = f"http://{srv.address}{WS_PATH}"

        async def authed(
            session: aiohttp.ClientSession,
        ) -> tuple[aiohttp.ClientWebSocketResponse, Callable[[bytes], bytes]]:
            ws = await session.ws_connect(url, max_msg_size=0)
            hello = Hello(os.urandom(16), "mallory", split.fingerprint, PROTOCOL_VERSION, new_nonce(), 1)
            opened = await handshake(ws, Role.INITIATOR, hello, SECRET, DEFAULT_LIMITS)
            return ws, opened.seal

        async def fuzz() -> None:
            async with aiohttp.ClientSession() as session:
                # A slow loris that never says hello, held open through the whole run.
                loris = await session.ws_connect(url)
                # Valid messages first, sealed, some hostile (a claim that the node is dead at the highest
                # incarnation): each is handled without breaking the link or the node.
                for msg in corpus:
                    ws, seal = await authed(session)
                    await ws.send_bytes(seal(encode_message(msg)))
                    outcomes[f"valid-{type(msg).__name__}:{await _outcome(ws, 0.2)}"] += 1
                    await ws.close()
                for case in range(240):
                    frame = rng.choice(frames)
                    mutated = rng.choice(MUTATORS)(rng, frame)
                    kind = ("unauth-first", "unauth-after-hello", "sealed", "unsealed", "tampered")[case % 5]
                    if kind.startswith("unauth"):
                        ws = await session.ws_connect(url, max_msg_size=0)
                        if kind == "unauth-after-hello":
                            hello = Hello(
                                os.urandom(16), "eve", split.fingerprint, PROTOCOL_VERSION, new_nonce(), 1
                            )
                            await ws.send_bytes(encode_message(hello))
                            await ws.receive(timeout=5)  # the node's hello
                        await ws.send_bytes(mutated)
                        outcome = await _outcome(ws, 6.0)
                        assert outcome == "closed", f"{kind}: an unauthenticated connection stayed open"
                    else:
                        ws, seal = await authed(session)
                        if kind == "sealed":
                            await ws.send_bytes(
                                seal(mutated)
                            )  # passes the MAC: the decoder and handlers see it
                        elif kind == "unsealed":
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_bytes(_flip(rng, seal(frame)))
                        outcome = await _outcome(ws)
                        if kind != "sealed":
                            assert outcome == "closed", f"{kind}: a frame with a bad seal was accepted"
                    outcomes[f"{kind}:{outcome}"] += 1
                    await ws.close()
                # A replayed frame, a text frame and an oversized frame on authenticated links.
                ws, seal = await authed(session)
                sealed = seal(frames[8])
                await ws.send_bytes(sealed)
                await ws.send_bytes(sealed)
                outcomes[f"replay:{await _outcome(ws)}"] += 1
                await ws.close()
                ws, _ = await authed(session)
                await ws.send_str("hello?")
                outcomes[f"text:{await _outcome(ws)}"] += 1
                await ws.close()
                ws, seal = await authed(session)
                with contextlib.suppress(ConnectionError):
                    await ws.send_bytes(seal(b"\x01" * (DEFAULT_LIMITS.max_frame_bytes + 1024)))
                outcomes[f"oversized:{await _outcome(ws, 3.0)}"] += 1
                await ws.close()
                outcomes[f"loris:{await _outcome(loris, 6.0)}"] += 1
                await loris.close()

        client = asyncio.ensure_future(good_client())
        try:
            await fuzz()
            # Longer than the default failure detection (~1.3-2 s): a node whose gossip broke is dead by now.
            await asyncio.sleep(2.5)
        finally:
            stop.set()
            await client

        print("fuzz outcomes:", dict(sorted(outcomes.items())))
        sources = Counter(r.source for _, r in answers)
        print(f"good peer: {len(answers)} answers during the fuzzing, sources {dict(sources)}")
        wrong = [(i, r.label, want[i]) for i, r in answers if r.label != want[i]]
        assert wrong == []
        assert good.counters.failed == 0
        assert len(answers) >= 200
        assert sources["peer:srv"] >= 0.9 * len(answers)
        for kind in ("replay", "text", "oversized", "loris"):
            assert outcomes[f"{kind}:closed"] == 1, kind
        broken = [k for k in outcomes if k.startswith("valid-") and not k.endswith(":open")]
        assert broken == [], f"valid messages closed their link: {broken}"
        assert good.membership.state(srv.node_id) is MemberState.ALIVE
        assert srv.membership.state(good.node_id) is MemberState.ALIVE
        assert srv.counters.auth_failures >= 96  # every unauthenticated case and the loris
        # Still a healthy node afterwards: the good link survived, and a new peer can join and be served.
        assert good.links
        assert any(lk.peer.name == "good" for lk in srv.links.values())
        async with Node(
            split,
            NodeConfig(name="late", secret=SECRET, network=NetworkConfig(mdns=False, seeds=[srv.address])),
        ) as late:
            await until(lambda: bool(late.links))
            late.config.strategy.local_tail_ms = 1000.0
            results = await late.infer_batch(x[:20], concurrency=4)
            assert isinstance(results, list)
            assert [r.label for r in results] == want[:20]


def test_every_mutator_output_decodes_or_raises_codec_error(
    split: SplitModel, data: datasets.Dataset
) -> None:
    """The offline half: the same mutations straight into the decoder (only CodecError may escape)."""
    rng = random.Random(SEED + 1)
    frames = [encode_message(m) for m in _corpus(split, data, os.urandom(16), 96)]
    kinds: Counter[str] = Counter()
    for _ in range(3000):
        mutated = rng.choice(MUTATORS)(rng, rng.choice(frames))
        try:
            decode_message(mutated)
            kinds["decoded"] += 1
        except CodecError as exc:
            kinds[type(exc).__name__] += 1
    assert kinds["decoded"] < 3000, kinds
    assert len(kinds) >= 4, kinds
