"""Offload as a strategy: the InferInput message (codec, admission, JPEG checks), its auth, a live offload and
the per-request choice of a Node."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
import torch
from PIL import Image

from ccied_p2p import datasets
from ccied_p2p.codec.admission import AdmissionPolicy, PeerBudget, Refusal
from ccied_p2p.codec.auth import SEAL_OVERHEAD
from ccied_p2p.codec.messages import Hello, InferInput, LoadReport
from ccied_p2p.codec.tensor import DEFAULT_LIMITS
from ccied_p2p.codec.wire import decode_message, encode_message, peek_message
from ccied_p2p.errors import EncodeError, MalformedError, PeerError
from ccied_p2p.inputs import LITE_SPEC, InputSpec, decode_jpeg, encode_jpeg
from ccied_p2p.planner import Link, PruneOption
from ccied_p2p.planner import situation as planned_situation
from ccied_p2p.runtime.config import CacheConfig, NetworkConfig
from ccied_p2p.runtime.node import Node, NodeConfig
from ccied_p2p.runtime.transport import PROTOCOL_VERSION, WS_PATH
from ccied_p2p.split import SplitModel
from ccied_p2p.strategy import Live, LivePeer, Strategy, StrategyPolicy, choose, live_situation
from ccied_p2p.testing.wait import until

SECRET = "test-secret-0123456789"
RNG = np.random.default_rng(0)


def _frame(h: int = 300, w: int = 400) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- pure: codec, spec, admission


def test_a_jpeg_input_round_trips_and_decodes_to_the_models_size() -> None:
    pixels = LITE_SPEC.prepare(_frame())
    data = encode_jpeg(pixels)
    msg = InferInput(7, "ab" * 32, LITE_SPEC.key, "jpeg", LITE_SPEC.shape, data)
    back = decode_message(encode_message(msg))
    assert back == msg
    assert isinstance(back, InferInput)
    decoded = decode_jpeg(back.data, LITE_SPEC)
    assert decoded.shape == (224, 224, 3)
    assert float(np.abs(decoded.astype(np.float32) - pixels).mean()) < 40  # lossy, same picture


def test_a_raw_input_round_trips_exactly() -> None:
    spec = InputSpec((28, 28), 1)
    x = spec.preprocess(RNG.integers(0, 256, (28, 28), dtype=np.uint8))
    msg = InferInput(3, "ff", spec.key, "raw", spec.shape, tensor=x)
    back = decode_message(encode_message(msg))
    assert isinstance(back, InferInput)
    assert back.tensor is not None
    assert np.array_equal(back.tensor, x)
    assert peek_message(encode_message(msg)).tensors[0].shape == (1, 1, 28, 28)


def test_the_spec_matches_lite_scaling_and_resizes() -> None:
    frame = _frame(480, 640)
    x = LITE_SPEC.preprocess(frame)
    assert x.shape == (1, 3, 224, 224)
    assert x.dtype == np.float32
    assert float(x.min()) >= -1.0
    assert float(x.max()) <= 1.0
    grey = InputSpec((28, 28), 1).preprocess(frame)
    assert grey.shape == (1, 1, 28, 28)
    assert LITE_SPEC.key != InputSpec((224, 224), 3).key  # another scaling is another agreement


@pytest.mark.parametrize(
    "bad",
    [
        InferInput(1, "f", "k", "png", (3, 8, 8), b"x"),
        InferInput(1, "f", "k", "raw", (3, 8, 8)),
        InferInput(1, "f", "k", "jpeg", (3, 8, 8), b"x", tensor=np.zeros((1, 3, 8, 8), np.float32)),
        InferInput(1, "f", "k", "jpeg", (3, 8, 8), b"x" * (DEFAULT_LIMITS.max_input_bytes + 1)),
    ],
)
def test_the_encoder_refuses_what_no_decoder_takes(bad: InferInput) -> None:
    with pytest.raises(EncodeError):
        encode_message(bad)


def _big_jpeg(side: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), 120).save(buf, format="JPEG", quality=10)
    return buf.getvalue()


def test_decode_jpeg_refuses_other_sizes_garbage_and_other_formats_before_decoding() -> None:
    with pytest.raises(MalformedError, match="this model takes 224x224"):
        decode_jpeg(_big_jpeg(4000), LITE_SPEC)  # 16 Mpx from a few KB: refused from the header
    with pytest.raises(MalformedError, match="not a decodable JPEG"):
        decode_jpeg(b"\xff\xd8\xff garbage" * 10, LITE_SPEC)
    png = io.BytesIO()
    Image.new("RGB", (224, 224)).save(png, format="PNG")
    with pytest.raises(MalformedError, match="not a decodable JPEG"):
        decode_jpeg(png.getvalue(), LITE_SPEC)
    good = encode_jpeg(LITE_SPEC.prepare(_frame()))
    with pytest.raises(MalformedError):
        decode_jpeg(good[: len(good) // 2], LITE_SPEC)  # truncated
    with pytest.raises(MalformedError, match="at most"):
        decode_jpeg(good + b"\0" * LITE_SPEC.max_jpeg_bytes(), LITE_SPEC)


def _policy(shape: tuple[int, ...] | None = LITE_SPEC.shape) -> AdmissionPolicy:
    return AdmissionPolicy((8, 4, 4), 4, 128, 16, 1 << 20, input_shape=shape, max_input_bytes=64 << 10)


def test_admission_checks_inputs_from_their_headers() -> None:
    ok = InferInput(1, "f", "k", "jpeg", LITE_SPEC.shape, b"\xff" * 1000)
    assert _policy().check(peek_message(encode_message(ok))) is None
    wrong = InferInput(2, "f", "k", "jpeg", (3, 4000, 4000), b"\xff" * 1000)
    refused = _policy().check(peek_message(encode_message(wrong)))
    assert refused is not None
    assert refused.code is Refusal.SHAPE
    assert refused.request_id == 2
    big = InferInput(3, "f", "k", "jpeg", LITE_SPEC.shape, b"\xff" * (65 << 10))
    refused = _policy().check(peek_message(encode_message(big)))
    assert refused is not None
    assert refused.code is Refusal.INPUT
    none = _policy(None).check(peek_message(encode_message(ok)))
    assert none is not None
    assert none.code is Refusal.INPUT
    raw = InferInput(4, "f", "k", "raw", (3, 8, 8), tensor=np.zeros((1, 3, 8, 8), np.float32))
    refused = _policy((3, 8, 9)).check(peek_message(encode_message(raw)))
    assert refused is not None
    assert refused.code is Refusal.SHAPE


def test_an_input_counts_against_the_peers_budget() -> None:
    policy = AdmissionPolicy((8,), 4, 128, 16, 400_000, input_shape=LITE_SPEC.shape, max_input_bytes=64 << 10)
    frame = peek_message(encode_message(InferInput(1, "f", "k", "jpeg", LITE_SPEC.shape, b"\xff" * 1000)))
    budget = PeerBudget()
    assert budget.admit(frame, policy) is None  # idle: one always gets in
    assert budget.nbytes == policy.input_cost(1000) > 700_000
    refused = budget.admit(frame, policy)
    assert refused is not None
    assert refused.code is Refusal.BUSY
    budget.release(1, policy.input_cost(1000))
    assert (budget.rows, budget.nbytes) == (0, 0)


def test_load_reports_carry_the_measured_costs() -> None:
    from ccied_p2p.codec.messages import Gossip, MemberState, MemberUpdate

    load = LoadReport(3, 1, 2.5, 10.0, model_ms=55.0, head_ms=20.0)
    member = MemberUpdate(b"\1" * 16, "a", "127.0.0.1", 1, "f", MemberState.ALIVE, 0, load=load)
    back = decode_message(encode_message(Gossip((member,))))
    assert isinstance(back, Gossip)
    assert back.updates[0].load == load


def test_plan_and_the_live_choice_agree_on_the_same_numbers(split: SplitModel) -> None:
    """``plan`` (planner.situation from a profile) and a node (live_situation from its measurements) hand
    the same numbers to the same pure function, so they choose alike, whichever strategy wins."""
    cut = split.split_at
    # The layers' real shapes and bytes, their times fixed by their MACs (LeNet in half a millisecond):
    # measured times on a loaded machine moved the head/tail balance and with it which strategy won.
    measured = split.profile(repeats=1)
    per_mac_ms = 0.5 / (measured.head_macs + measured.tail_macs)
    layers = tuple(replace(layer, latency_ms=max(layer.macs, 1) * per_mac_ms) for layer in measured.layers)
    profile = replace(
        measured,
        layers=layers,
        head_ms=sum(layer.latency_ms for layer in layers if layer.part == "head"),
        tail_ms=sum(layer.latency_ms for layer in layers if layer.part == "tail"),
    )
    chosen = set()
    # LeNet takes a fraction of a millisecond: only a device 100x slower than its peer offloads or splits.
    # hits None: no cache.
    for slowdown, mbit, hits in [(1, 10, 0), (1, 10, 30), (100, 100, 0), (100, 100, None)]:
        lookups = [] if hits is None else [True] * hits + [False] * (32 - hits)
        link = Link.mbit(mbit, 20)
        planned = planned_situation(
            profile,
            link,
            0.0 if hits is None else (hits + 1) / 34,
            {cut: [PruneOption(0.0, 0.06)]},
            input_wire_bytes=28 * 28 * 4,
            slowdown=slowdown,
        )
        peer = planned.peers[0].costs
        live = Live(
            cut,
            head_s=planned.device.head(cut),
            tail_s=planned.device.rest(cut),
            peers=[LivePeer("peer0", link.bandwidth, link.rtt_s, peer.model_s * 1000, peer.head(cut) * 1000)],
            input_bytes=planned.input_bytes,
            activation_bytes=planned.activation_bytes[cut],
            lookups=lookups,
            cache=hits is not None,
            lookup_s=planned.lookup_s,
            slowdown=slowdown,
        )
        for policy in (StrategyPolicy(), StrategyPolicy(frames_stay=True)):
            mine, theirs = choose(live_situation(live), policy), choose(planned, policy)
            assert [(o.label, round(o.seconds, 9)) for o in mine] == [
                (o.label, round(o.seconds, 9)) for o in theirs
            ]
            chosen.add(mine[0].strategy)
    assert chosen == set(Strategy)


# ---------------------------------------------------------------- live


def _config(name: str, *, seeds: Sequence[str] = (), cache: bool = True) -> NodeConfig:
    network = NetworkConfig(mdns=False, seeds=seeds, request_timeout=20.0)
    return NodeConfig(name=name, secret=SECRET, network=network, cache=CacheConfig(enabled=cache))


@pytest.fixture
async def pair(split: SplitModel) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        Node(split, _config("a", cache=False)) as a,
        Node(split, _config("b", seeds=[a.address], cache=False)) as b,
    ):
        await until(lambda: a.links and b.links, 10.0, "a link each way")
        yield a, b


def _digits(data: datasets.Dataset, n: int) -> list[np.ndarray]:
    """The test images back as uint8 frames (what a camera would give), and the model's labels for them."""
    x = data.test_x[:n].numpy()
    lo, hi = float(x.min()), float(x.max())
    return [np.round((row[0] - lo) / (hi - lo) * 255).astype(np.uint8) for row in x]


@pytest.mark.network
async def test_a_node_offloads_a_frame_and_gets_the_whole_models_answer(
    pair: tuple[Node, Node], split: SplitModel, data: datasets.Dataset
) -> None:
    a, b = pair
    frames = _digits(data, 8)
    for frame in frames:
        want = int(split(torch.from_numpy(b.input_spec.preprocess(frame))).argmax(1))
        result = await b.infer_frame(frame, only=Strategy.OFFLOAD)
        assert (result.strategy, result.source, result.label) == ("offload", "peer:a", want)
        assert result.bytes_sent > 28 * 28 * 4  # the raw float32 input went, not an activation
    assert a.counters.served == len(frames)
    assert b.counters.failed == 0


@pytest.mark.network
async def test_a_node_refuses_bad_inputs_and_keeps_serving(
    pair: tuple[Node, Node], split: SplitModel, data: datasets.Dataset
) -> None:
    a, b = pair
    link = b.links[a.node_id]
    spec = b.input_spec
    fp = split.fingerprint
    jpeg = InferInput(0, fp, spec.key, "jpeg", spec.shape, _big_jpeg(28, "L"))  # JPEG, not raw: fine
    bad = [
        (InferInput(0, fp, spec.key, "jpeg", spec.shape, b"\xff\xd8 not a jpeg"), "input"),
        (InferInput(0, fp, spec.key, "jpeg", spec.shape, _big_jpeg(56, "L")), "input"),  # 56x56: header
        (InferInput(0, fp, spec.key, "jpeg", spec.shape, _big_jpeg(28)), "input"),  # RGB, not L
        (InferInput(0, fp, spec.key, "jpeg", spec.shape, b"\xff" * (64 << 10)), "input"),  # above 16 KiB
        (InferInput(0, fp, "other-scaling", "raw", spec.shape, tensor=spec.preprocess(_frame(28, 28))), "input"),
        (InferInput(0, fp, spec.key, "raw", (1, 29, 28), tensor=np.zeros((1, 1, 29, 28), np.float32)), "shape"),
        (InferInput(0, "0" * 64, spec.key, "raw", spec.shape, tensor=spec.preprocess(_frame(28, 28))), "fingerprint"),
    ]  # fmt: skip
    for msg, code in bad:
        with pytest.raises(PeerError) as err:
            await link.request(msg, 20.0)
        assert err.value.code == code
    answer, _, _ = await link.request(jpeg, 20.0)  # a JPEG of the right size is fine
    assert len(answer.labels) == 1
    result = await b.infer_frame(_digits(data, 1)[0], only=Strategy.OFFLOAD)
    assert result.strategy == "offload"
    assert a.counters.refused.get("input", 0) == 5
    assert a.counters.refused.get("shape", 0) == 1
    assert not link.closed.is_set()


@pytest.mark.network
async def test_an_unauthenticated_peer_cannot_send_an_input(split: SplitModel) -> None:
    async with Node(split, _config("a")) as a, aiohttp.ClientSession() as session:
        spec = a.input_spec
        frame = encode_message(
            InferInput(
                1, split.fingerprint, spec.key, "raw", spec.shape, tensor=spec.preprocess(_frame(28, 28))
            )
        )
        async with session.ws_connect(f"http://{a.address}{WS_PATH}") as ws:
            await ws.send_bytes(frame)  # instead of a Hello
            replies = [m async for m in ws]
        codes = [
            decode_message(m.data).code  # type: ignore[union-attr]
            for m in replies
            if m.type is aiohttp.WSMsgType.BINARY
        ]
        assert codes == ["auth"]
        async with session.ws_connect(f"http://{a.address}{WS_PATH}") as ws:
            hello = Hello(b"\2" * 16, "eve", split.fingerprint, PROTOCOL_VERSION, b"\3" * 16, 1)
            await ws.send_bytes(encode_message(hello))
            await ws.send_bytes(frame)  # before proving the secret
            async for _ in ws:
                pass
        assert a.counters.served == 0
        assert a.counters.auth_failures == 2


@pytest.mark.network
async def test_the_choice_follows_the_measurements_and_agrees_with_plan(
    pair: tuple[Node, Node], split: SplitModel, data: datasets.Dataset
) -> None:
    _a, b = pair
    await until(
        lambda: (m := b.peers.get("a")) is not None and m.load is not None and m.load.model_ms > 0,
        10.0,
        "a's load report with its model cost",
    )
    s = b.situation()
    assert s.device.model_s > 0
    assert [p.name for p in s.peers] == ["a"]
    assert s.peers[0].costs.model_s > 0
    assert s.activation_bytes[split.split_at] > 0
    assert [o.label for o in b.options()] == [o.label for o in choose(s)]
    # Whatever it measured, with frames_stay it never offloads.
    result = await b.infer_frame(_digits(data, 1)[0])
    assert result.chosen
    assert result.strategy in {"local", "split", "offload", "cache"}
    b.config.strategy.frames_stay = True
    assert all(o.strategy is not Strategy.OFFLOAD for o in b.options())
    for frame in _digits(data, 4):
        assert (await b.infer_frame(frame)).strategy != "offload"


@pytest.mark.network
async def test_what_offload_would_send_is_measured_before_it_is_ever_chosen(
    split: SplitModel, data: datasets.Dataset
) -> None:
    """The regimes run of 2026-12-02: the input's size was learnt only from offloads, so a first guess above the
    real size kept offload unchosen and the guess unrevised. The first request measures it (and again every
    ``explore_every`` requests, size_input); a device whose frames stay never encodes them."""
    async with (
        Node(split, _config("a", cache=False)) as a,
        Node(split, _config("b", seeds=[a.address], cache=False)) as b,
        Node(split, _config("c", seeds=[a.address], cache=False)) as c,
    ):
        c.config.strategy.frames_stay = True
        await until(lambda: len(b.links) == 2 and len(c.links) == 2, 10.0, "two links each")
        spec = b.input_spec
        frame = _digits(data, 1)[0]
        sent = InferInput(1, split.fingerprint, spec.key, "raw", spec.shape, tensor=spec.preprocess(frame))
        guess = b.situation().input_bytes
        assert guess == spec.pixels * 4 + 160 != len(encode_message(sent)) + SEAL_OVERHEAD
        await b.infer_frame(frame)  # offloaded or not, what an offload sends is now measured
        assert b.situation().input_bytes == len(encode_message(sent)) + SEAL_OVERHEAD
        for frame in _digits(data, 3):
            assert (await c.infer_frame(frame)).strategy != "offload"
        assert c.situation().input_bytes == guess  # never encoded


@pytest.mark.network
async def test_requests_forced_to_a_strategy_do_not_count_toward_exploring(
    split: SplitModel, data: datasets.Dataset
) -> None:
    """The regimes run of 2026-12-02: the node that also ran the fixed strategies counted their requests, so it
    looked the cache up and sized its input every 2.5 decided frames instead of every 10."""
    async with (
        Node(split, _config("a", cache=False)) as a,
        Node(split, _config("b", seeds=[a.address])) as b,
    ):
        await until(lambda: a.links and b.links, 10.0, "a link each way")
        frames = _digits(data, 9)
        await b.infer_frame(frames[0])  # decided: sizes the input, may look the cache up
        ex = b._inference.exploration  # internal: nothing outside the node shows when it explores
        before = (ex.since_lookup, ex.since_sized)
        for frame in frames[1:]:
            for only in (Strategy.LOCAL, Strategy.SPLIT):
                assert (await b.infer_frame(frame, only=only)).strategy == only.value
        assert (ex.since_lookup, ex.since_sized) == before
        await b.infer_frame(frames[1])
        assert ex.since_sized == before[1] + 1  # a decided request counts
