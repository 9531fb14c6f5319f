"""A passive eavesdropper on a link (a recording relay without the secret) learns sizes and timing, not content.

Two nodes talk through a :class:`~ccied_p2p.testing.relay.Relay` that records every byte; a third joins the
first directly, so its name reaches the second only as gossip across the recorded link. The capture is
searched for what the issue saw leak: the activation (the lz4 blob the node sends and its raw fp16
values), each label with its confidence (their msgpack bytes), the member names and the model fingerprint.
WebSocket frames from the dialling side are XOR-masked, so each direction is first parsed into unmasked
frame payloads; the same search on an insecure cluster (no secret, frames in clear) finds every needle, so
a miss on the secure cluster means the bytes are not there, not that the search is blind.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import msgpack
import numpy as np
import pytest

from ccied_p2p import datasets
from ccied_p2p.codec.auth import Role, clear_hello, compute_proof, new_nonce, open_session, verify_proof
from ccied_p2p.codec.messages import Auth, ErrorMessage, Hello
from ccied_p2p.codec.tensor import encode_tensor
from ccied_p2p.codec.wire import decode_message, encode_message
from ccied_p2p.runtime.config import CacheConfig, NetworkConfig, StrategyConfig
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.relay import Capture, Relay
from ccied_p2p.testing.wait import until

pytestmark = pytest.mark.network

SECRET = "test-secret-0123456789"
ALICE, BOB, CAROL = "alice-cam-3f9c1e", "bob-cam-8a27d4", "carol-cam-51be06"
REQUESTS = 8
ENCODING = "sparse-f16-lz4"


def _ws_payloads(stream: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each complete WebSocket frame after the HTTP upgrade in one direction."""
    at = stream.index(b"\r\n\r\n") + 4
    frames = []
    while at + 2 <= len(stream):
        b0, b1 = stream[at], stream[at + 1]
        assert b0 & 0x70 == 0, "RSV bits set: a WebSocket extension (compression) would hide the payload"
        length, at = b1 & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack_from(">H", stream, at), at + 2
        elif length == 127:
            (length,), at = struct.unpack_from(">Q", stream, at), at + 8
        mask = b""
        if b1 & 0x80:
            mask, at = stream[at : at + 4], at + 4
        if at + length > len(stream):
            break  # the connection closed inside a frame
        payload = np.frombuffer(stream, np.uint8, length, at)
        if mask:
            payload = payload ^ np.resize(np.frombuffer(mask, np.uint8), length)
        frames.append((b0 & 0x0F, payload.tobytes()))
        at += length
    return frames


@dataclass
class Eavesdropped:
    captures: list[Capture]
    results: list[InferenceResult]
    activations: list[np.ndarray]  # what the asker's head computed for each request, as the node encodes it

    def streams(self) -> list[bytes]:
        return [bytes(s) for c in self.captures for s in (c.up, c.down)]

    def payloads(self) -> list[bytes]:
        return [p for s in self.streams() for op, p in _ws_payloads(s) if op == 0x2]

    def contains(self, needle: bytes) -> bool:
        return any(needle in s for s in self.streams()) or any(needle in p for p in self.payloads())


async def _eavesdrop(split: SplitModel, data: datasets.Dataset, *, secure: bool) -> Eavesdropped:
    def config(name: str, *, seeds: Sequence[str] = (), slow: bool = False) -> NodeConfig:
        """``slow``: no cache, and an own tail that looks slow (every request goes to a peer)."""
        return NodeConfig(
            name=name,
            secret=SECRET if secure else None,
            insecure=not secure,
            network=NetworkConfig(mdns=False, seeds=seeds, request_timeout=20.0 if slow else 2.0),
            cache=CacheConfig(enabled=not slow),
            strategy=StrategyConfig(local_tail_ms=1000.0 if slow else None),
        )

    x = data.test_x[:REQUESTS]
    async with (
        Node(split, config(ALICE)) as alice,
        Relay("127.0.0.1", 0, ("127.0.0.1", alice.port), record=True, name="tap") as tap,
        # Bob's own tail looks slow and he has no cache: every request crosses the recorded link.
        Node(split, config(BOB, seeds=[tap.address], slow=True)) as bob,
    ):
        await until(lambda: bob.links)
        results = await bob.infer_batch(x, concurrency=1)
        assert isinstance(results, list)
        assert [r.source for r in results] == [f"peer:{ALICE}"] * REQUESTS
        assert [r.label for r in results] == split(x).argmax(1).tolist()
        async with Node(split, config(CAROL, seeds=[alice.address])) as carol:
            await until(lambda: CAROL in bob.peers and carol.links)
            # Let the gossip that told Bob about Carol (and more rounds of it) cross the link.
            seen = len(_ws_payloads(bytes(tap.captures[0].down)))
            await until(lambda: len(_ws_payloads(bytes(tap.captures[0].down))) >= seen + 5)
    assert len(tap.captures) == 1
    assert tap.stats.bytes_up > REQUESTS * 100
    acts = [split.head(x[k : k + 1]).numpy() for k in range(REQUESTS)]
    return Eavesdropped(tap.captures, results, acts)


def _needles(split: SplitModel, seen: Eavesdropped) -> dict[str, list[bytes]]:
    blobs = [encode_tensor(a, ENCODING) for a in seen.activations]
    return {
        "activation lz4 blob": [b[len(b) // 2 : len(b) // 2 + 24] for b in blobs],
        "activation fp16 values": [a[a != 0].astype("<f2").tobytes()[:16] for a in seen.activations],
        "label and confidence": [
            msgpack.packb([r.label]) + msgpack.packb([r.confidence]) for r in seen.results
        ],
        "member names": [name.encode() for name in (ALICE, BOB, CAROL)],
        "model fingerprint": [split.fingerprint.encode()],
    }


def _found(split: SplitModel, seen: Eavesdropped) -> dict[str, int]:
    return {what: sum(seen.contains(n) for n in found) for what, found in _needles(split, seen).items()}


async def test_a_recording_relay_sees_no_activation_label_or_name(
    split: SplitModel, data: datasets.Dataset
) -> None:
    # Control: without a secret everything travels in clear, and the search finds every kind of needle.
    clear = await _eavesdrop(split, data, secure=False)
    found = _found(split, clear)
    # Raw fp16 values show in clear only where lz4 left them as literals, which depends on the trained
    # weights (seen: 8 of 8 with one training, 0 with another); the lz4 blob itself is always there.
    assert 0 <= found.pop("activation fp16 values") <= REQUESTS
    assert found == {
        "activation lz4 blob": REQUESTS,
        "label and confidence": REQUESTS,
        "member names": 3,
        "model fingerprint": 1,
    }, found

    sealed = await _eavesdrop(split, data, secure=True)
    assert _found(split, sealed) == dict.fromkeys([*found, "activation fp16 values"], 0)
    # What the eavesdropper does see before the keys exist: hellos without names or fingerprints.
    up, down = (_ws_payloads(bytes(s)) for s in (sealed.captures[0].up, sealed.captures[0].down))
    hellos = [decode_message(up[0][1]), decode_message(down[0][1])]
    assert all(isinstance(h, Hello) and h.name == "" and h.fingerprint == "" for h in hellos)


async def test_a_sealed_hello_that_contradicts_the_clear_one_is_refused(split: SplitModel) -> None:
    async with (
        Node(split, NodeConfig(name="srv-cam", secret=SECRET, network=NetworkConfig(mdns=False))) as srv,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://{srv.address}{WS_PATH}") as ws,
    ):
        # A client with the secret runs the handshake by hand, then claims another port in its sealed hello.
        me = Hello(os.urandom(16), "liar", split.fingerprint, PROTOCOL_VERSION, new_nonce(), 1)
        clear = clear_hello(me)
        await ws.send_bytes(encode_message(clear))
        peer = decode_message((await ws.receive(timeout=5)).data)
        assert isinstance(peer, Hello)
        assert (peer.name, peer.fingerprint) == ("", "")
        await ws.send_bytes(encode_message(Auth(compute_proof(SECRET, Role.INITIATOR, clear, peer))))
        theirs = decode_message((await ws.receive(timeout=5)).data)
        assert isinstance(theirs, Auth)
        verify_proof(SECRET, Role.RESPONDER, clear, peer, theirs.proof)
        sealer, opener = open_session(SECRET, Role.INITIATOR, clear, peer)
        identity = decode_message(opener.open((await ws.receive(timeout=5)).data))
        assert isinstance(identity, Hello)
        assert (identity.name, identity.fingerprint) == ("srv-cam", split.fingerprint)
        await ws.send_bytes(sealer.seal(encode_message(dataclasses.replace(me, port=2))))
        refusal = await ws.receive(timeout=5)
        assert isinstance(decode_message(refusal.data), ErrorMessage)
        await until(lambda: srv.counters.auth_failures == 1)
        assert not srv.links
