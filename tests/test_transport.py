"""Links over real loopback WebSockets: a Link only moves its session's bytes (the protocol: test_codec_session)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import torch

from ccied_p2p import datasets
from ccied_p2p.codec.auth import SEAL_OVERHEAD, Role, new_nonce
from ccied_p2p.codec.messages import Ack, Hello, InferRequest, Message, Ping
from ccied_p2p.codec.session import SessionState
from ccied_p2p.codec.tensor import DEFAULT_LIMITS
from ccied_p2p.codec.wire import encode_message
from ccied_p2p.runtime.config import NetworkConfig
from ccied_p2p.runtime.node import Node, NodeConfig
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH, Link, handshake
from ccied_p2p.split import SplitModel

SECRET = "transport-secret-0123456789"


class Client:
    """One authenticated link to a node, built as the node builds it: handshake, then Link over the session."""

    def __init__(self, link: Link, me: Hello) -> None:
        self.link, self.me = link, me
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()

    async def on_message(self, link: Link, msg: Message, _decode_s: float) -> None:
        if isinstance(msg, Ping):  # the node runs SWIM over the link: answer its probes
            await link.send(Ack(msg.seq, self.me.node_id))
        elif isinstance(msg, Ack):
            self.acks.put_nowait(msg)


@pytest_asyncio.fixture
async def client(split: SplitModel) -> AsyncIterator[tuple[Node, Client]]:
    async with (
        Node(split, NodeConfig(name="srv", secret=SECRET, network=NetworkConfig(mdns=False))) as srv,
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(f"http://{srv.address}{WS_PATH}")
        me = Hello(os.urandom(16), "client", split.fingerprint, PROTOCOL_VERSION, new_nonce(), 1)
        session = await handshake(ws, Role.INITIATOR, me, SECRET, DEFAULT_LIMITS)
        assert session.state is SessionState.OPEN
        assert (session.peer.name, session.peer.fingerprint) == ("srv", split.fingerprint)
        holder: list[Client] = []

        async def on_message(link: Link, msg: Message, decode_s: float) -> None:
            await holder[0].on_message(link, msg, decode_s)

        link = Link(ws, session, on_message)
        holder.append(Client(link, me))
        assert link.session is session
        assert (link.peer, link.role) == (session.peer, Role.INITIATOR)
        reader = asyncio.create_task(link.run())
        try:
            yield srv, holder[0]
        finally:
            await link.close()
            await reader


async def test_requests_over_a_link_carry_its_own_ids_and_get_their_answers(
    client: tuple[Node, Client], split: SplitModel, data: datasets.Dataset
) -> None:
    _, c = client
    x = torch.as_tensor(data.test_x[:3])
    with torch.no_grad():
        act = split.head(x).numpy().astype(np.float32)
        want = split(x).argmax(1).tolist()
    for expected_id in (1, 2, 3):
        msg = InferRequest(999, split.fingerprint, split.split_at, act)
        answer, sent, encode_s = await c.link.request(msg, timeout=30)
        assert answer.request_id == expected_id  # the link's id, not the caller's 999
        assert list(answer.labels) == want
        assert sent == len(encode_message(dataclasses.replace(msg, request_id=expected_id))) + SEAL_OVERHEAD
        assert encode_s >= 0
    assert c.link.in_flight == 0
    assert c.link.session.pending == frozenset()


async def test_a_send_cancelled_while_it_waits_leaves_no_gap_in_the_sequence(
    client: tuple[Node, Client],
) -> None:
    srv, c = client
    link = c.link
    sent_before = link.stats.frames_sent
    async with link._send_lock:  # another writer holds the socket
        waiting = asyncio.create_task(link.send(Ping(41)))
        await asyncio.sleep(0)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # The cancelled frame was never sealed, so the next one carries the sequence number the node expects.
    await link.send(Ping(42))
    ack = await asyncio.wait_for(c.acks.get(), 10)
    assert ack.seq == 42
    assert link.stats.frames_sent > sent_before
    assert not link.closed.is_set()
    assert any(lk.node_id == c.me.node_id for lk in srv.links.values())
