"""The Node's embedding API: infer vs infer_batch, where an answer came from, observers, the started state."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import ccied_p2p
from ccied_p2p import datasets
from ccied_p2p.cache import FeatureReducer, SemanticCache
from ccied_p2p.errors import ConfigError, LocalError, RemoteError
from ccied_p2p.presets import reducer_for
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig, NodeObserver
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

SECRET = "api-secret-0123456789"
pytestmark = pytest.mark.network


def _config(name: str, **kw: Any) -> NodeConfig:
    return NodeConfig(name=name, secret=SECRET, mdns=False, **kw)


class _CountingReducer(FeatureReducer):
    """The node's own reducer, counting how often an activation is reduced to a cache key."""

    name = "counting"

    def __init__(self, inner: FeatureReducer) -> None:
        self.inner = inner
        self.rows = 0

    def __call__(self, activation: npt.NDArray[np.floating[Any]]) -> Any:
        self.rows += len(activation)
        return self.inner(activation)

    def config(self) -> dict[str, Any]:
        return self.inner.config()


def _one_vote_cache(split: SplitModel) -> tuple[SemanticCache, _CountingReducer]:
    """A cache that answers an input seen once (one neighbour suffices), with a key counter."""
    reducer = _CountingReducer(reducer_for(split.activation_shape, split.channel_mask))
    return SemanticCache(k=1, votes=1, reducer=reducer), reducer


async def test_infer_takes_one_input_and_infer_batch_many(split: SplitModel, data: datasets.Dataset) -> None:
    x = data.test_x[:5]
    want = split(x).argmax(1).tolist()
    async with Node(split, _config("solo", cache=False)) as node:
        one = await node.infer(x[0])
        assert type(one) is InferenceResult
        assert one.label == want[0]
        batch = await node.infer_batch(x, concurrency=2)
        assert type(batch) is list
        assert all(type(r) is InferenceResult for r in batch)
        assert [r.label for r in batch] == want
        # A sequence of inputs is a batch too, and the numpy form of one input is one input.
        listed = await node.infer_batch([x[1], x[2]])
        assert [r.label for r in listed] == want[1:3]
        assert (await node.infer(x[3].numpy())).label == want[3]
        with pytest.raises(ConfigError, match="infer_batch"):
            await node.infer(x)
        with pytest.raises(ConfigError, match="expected an input shaped"):
            await node.infer_batch(x[:, :, :-1])
        assert node.counters.requests == 1 + 5 + 2 + 1
        assert node.counters.failed == 0


async def test_kind_and_peer_say_who_answered(split: SplitModel, data: datasets.Dataset) -> None:
    x = data.test_x[0]
    cache, reducer = _one_vote_cache(split)
    async with (
        Node(split, _config("srv", cache=False, offload=False)) as srv,
        # Its own tail looks slow: a miss goes to the peer.
        Node(split, _config("dev", seeds=[srv.address], local_tail_ms=1000.0), cache=cache) as dev,
    ):
        assert dev.cache is cache  # an empty cache handed in is the one used
        await until(lambda: dev.links and srv.links)
        peer = await dev.infer(x)
        assert (peer.kind, peer.peer, peer.source, peer.strategy) == ("peer", "srv", "peer:srv", "split")
        # The miss reduced the activation to its key once, for the lookup and the insert together.
        assert reducer.rows == 1
        hit = await dev.infer(x)
        assert (hit.kind, hit.peer, hit.source, hit.strategy) == ("cache", None, "cache", "cache")
        assert hit.label == peer.label
        assert reducer.rows == 2
        local = await srv.infer(x)
        assert (local.kind, local.peer, local.source, local.strategy) == ("local", None, "local", "local")
        assert dev.counters.by_kind == {"peer": 1, "cache": 1}
        assert dev.counters.by_source == {"peer:srv": 1, "cache": 1}
    with pytest.raises(ValueError, match="peer"):
        InferenceResult(1, 0.5, "peer", {})
    with pytest.raises(ValueError, match="peer"):
        InferenceResult(1, 0.5, "local", {}, peer="srv")


async def test_an_observer_subclasses_the_no_op_base(split: SplitModel, data: datasets.Dataset) -> None:
    class Results(NodeObserver):
        def __init__(self) -> None:
            self.seen: list[InferenceResult] = []

        def on_result(self, node: Node, result: InferenceResult) -> None:
            self.seen.append(result)

    base = NodeObserver()
    base.on_gossip_round(Node(split, _config("idle")))  # every hook of the base does nothing
    watcher = Results()
    async with Node(split, _config("watched", cache=False)) as node:
        node.observers.append(watcher)
        results = await node.infer_batch(data.test_x[:3])
        # The hooks it did not override ran as no-ops (a gossip round, its start); an error would be logged.
        await until(lambda: node.counters.gossip_rounds > 0)
    assert watcher.seen == results


def _state(node: Node) -> tuple[bool, bool]:
    return node.started, node.running


async def test_membership_before_start_is_a_clear_error(split: SplitModel) -> None:
    node = Node(split, _config("later"))
    assert _state(node) == (False, False)
    with pytest.raises(RuntimeError, match="not started"):
        _ = node.membership
    with pytest.raises(RuntimeError, match="not started"):
        _ = node.app
    # What needs no server exists from the start: the cache, the counters, an empty view of the cluster.
    assert len(node.cache) == 0
    assert node.stats()["connections"] is None  # no guard before the server
    assert node.peers == {}
    assert node.links == {}
    assert node.stats()["cache"]["entries"] == 0
    async with node:
        assert _state(node) == (True, True)
        assert node.membership.me.name == "later"
        assert node.guard is not None
        with pytest.raises(RuntimeError, match="started already"):
            await node.start()
    assert _state(node) == (True, False)
    assert node.membership.me.name == "later"  # still readable after close, for post-mortems


def test_the_package_exports_the_embedding_api() -> None:
    assert ccied_p2p.NodeObserver is NodeObserver
    assert ccied_p2p.InferenceResult is InferenceResult
    assert ccied_p2p.LocalError is LocalError
    assert ccied_p2p.RemoteError is RemoteError
    assert set(ccied_p2p.__all__) >= {"NodeObserver", "LocalError", "RemoteError", "InferenceResult"}
