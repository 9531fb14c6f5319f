"""The Node's embedding API: infer vs infer_batch, where an answer came from, observers, the started state."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import ccied_p2p
from ccied_p2p import datasets
from ccied_p2p.cache import FeatureReducer, SemanticCache
from ccied_p2p.errors import ConfigError, LocalError, RemoteError
from ccied_p2p.presets import reducer_for
from ccied_p2p.runtime.config import (
    CacheConfig,
    ConnectionLimits,
    NetworkConfig,
    ServingConfig,
    StrategyConfig,
)
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig, NodeObserver
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

SECRET = "api-secret-0123456789"
pytestmark = pytest.mark.network


def _config(name: str, *, seeds: Sequence[str] = (), **groups: Any) -> NodeConfig:
    return NodeConfig(name=name, secret=SECRET, network=NetworkConfig(mdns=False, seeds=seeds), **groups)


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
    async with Node(split, _config("solo", cache=CacheConfig(enabled=False))) as node:
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
        Node(
            split, _config("srv", cache=CacheConfig(enabled=False), strategy=StrategyConfig(offload=False))
        ) as srv,
        # Its own tail looks slow: a miss goes to the peer.
        Node(
            split,
            _config("dev", seeds=[srv.address], strategy=StrategyConfig(local_tail_ms=1000.0)),
            cache=cache,
        ) as dev,
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
    async with Node(split, _config("watched", cache=CacheConfig(enabled=False))) as node:
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


GROUPS = {
    "NodeConfig": NodeConfig,
    "NetworkConfig": NetworkConfig,
    "ConnectionLimits": ConnectionLimits,
    "CacheConfig": CacheConfig,
    "ServingConfig": ServingConfig,
    "StrategyConfig": StrategyConfig,
}


def test_the_config_groups_and_their_field_types_are_exported() -> None:
    import ccied_p2p.runtime
    from ccied_p2p.codec.tensor import Limits
    from ccied_p2p.gossip.membership import MembershipConfig
    from ccied_p2p.inputs import InputSpec
    from ccied_p2p.scheduler import SchedulerPolicy

    wanted = {
        **GROUPS,
        "MembershipConfig": MembershipConfig,
        "SchedulerPolicy": SchedulerPolicy,
        "Limits": Limits,
        "InputSpec": InputSpec,
    }
    for module in (ccied_p2p, ccied_p2p.runtime):
        assert set(module.__all__) >= set(wanted), module.__name__
        for name, cls in wanted.items():
            assert getattr(module, name) is cls, (module.__name__, name)
    # Every group is a field of NodeConfig, with a default of its own type.
    config = NodeConfig()
    groups = {"network": NetworkConfig, "connections": ConnectionLimits, "cache": CacheConfig}
    groups |= {"serving": ServingConfig, "strategy": StrategyConfig, "membership": MembershipConfig}
    assert {k: type(getattr(config, k)) for k in groups} == groups


@pytest.mark.parametrize(
    ("group", "bad", "field"),
    [
        ("network", NetworkConfig(port=70_000), "network.port"),
        ("network", NetworkConfig(request_timeout=0.0), "network.request_timeout"),
        ("network", NetworkConfig(seeds="127.0.0.1:9000"), "network.seeds"),
        ("connections", ConnectionLimits(idle_timeout=float("inf")), "connections.idle_timeout"),
        (
            "connections",
            ConnectionLimits(max_connections_per_address=0),
            "connections.max_connections_per_address",
        ),
        ("cache", CacheConfig(capacity=0), "cache.capacity"),
        ("cache", CacheConfig(k=2, votes=3), "cache.votes"),
        ("cache", CacheConfig(min_confidence=1.5), "cache.min_confidence"),
        ("serving", ServingConfig(max_batch=0), "serving.max_batch"),
        ("serving", ServingConfig(peer_queue_rows=8), "serving.peer_queue_rows"),
        ("strategy", StrategyConfig(offload_format="png"), "strategy.offload_format"),
        ("strategy", StrategyConfig(jpeg_quality=101), "strategy.jpeg_quality"),
        ("strategy", StrategyConfig(explore_every=-1), "strategy.explore_every"),
    ],
)
def test_validate_names_the_bad_field_of_a_group(group: str, bad: Any, field: str) -> None:
    good = NodeConfig(secret=SECRET)
    good.validate()
    bad.__class__().validate()  # the group's defaults are fine: the one bad value is what is refused
    with pytest.raises(ConfigError, match=f"^{re.escape(field)} "):
        bad.validate()
    with pytest.raises(ConfigError, match=f"^{re.escape(field)} "):
        dataclasses.replace(good, **{group: bad}).validate()


def _serve_config(*argv: str) -> NodeConfig:
    from ccied_p2p.cli import _node_config, build_parser

    config: NodeConfig = _node_config(build_parser(benches=False).parse_args(["serve", *argv]))
    return config


def test_serve_options_default_to_a_default_node_config() -> None:
    assert _serve_config("--name", "n", "--insecure") == NodeConfig(name="n", insecure=True)
    # And what a launcher passes comes back as the same groups.
    from ccied_p2p.launch import serve_argv
    from ccied_p2p.presets import CacheSettings

    settings = CacheSettings(0.125, 4, 2, 0.5)
    argv = serve_argv(
        model="lenet",
        data="mnist-5k",
        amount=0.5,
        name="n",
        host="127.0.0.2",
        port=9000,
        seeds=["127.0.0.3:9001", "127.0.0.4:9002"],
        advertise_host="127.0.1.2",
        extra=settings.as_args(),
    )
    config = _serve_config(*argv[argv.index("serve") + 1 :], "--insecure")
    network = NetworkConfig(
        host="127.0.0.2",
        port=9000,
        advertise_host="127.0.1.2",
        seeds=("127.0.0.3:9001", "127.0.0.4:9002"),
        mdns=False,
    )
    assert config == NodeConfig(name="n", insecure=True, network=network, cache=settings.config())


def test_the_cache_config_is_the_node_caches_answer_rule(split: SplitModel) -> None:
    rule = CacheConfig(capacity=7, threshold=0.25, k=4, votes=2, min_confidence=0.5)
    node = Node(split, _config("tuned", cache=rule))
    got = node.cache
    assert (got.capacity, got.threshold, got.k, got.votes, got.min_confidence) == (7, 0.25, 4, 2, 0.5)
    # A cache handed in keeps its own rule where the config says nothing (None), and takes what it says.
    mine, _ = _one_vote_cache(split)
    node = Node(split, _config("mine", cache=CacheConfig(threshold=0.5)), cache=mine)
    assert node.cache is mine
    assert (mine.threshold, mine.k, mine.votes) == (0.5, 1, 1)
    odd, _ = _one_vote_cache(split)
    before = (odd.threshold, odd.k, odd.votes)
    with pytest.raises(ConfigError, match=r"^cache\.votes "):
        Node(split, _config("odd", cache=CacheConfig(threshold=0.9, votes=2)), cache=odd)
    assert (odd.threshold, odd.k, odd.votes) == before  # refused whole, not half applied


def test_cluster_nodes_get_their_own_copy_of_each_group() -> None:
    from ccied_p2p.presets import CacheSettings
    from ccied_p2p.testing import LocalCluster

    # node_options go through the same path for every in-process node as these options do here.
    shared, cache = StrategyConfig(local_tail_ms=5.0), CacheConfig(share=False)
    cluster = LocalCluster(2, cache_settings=CacheSettings(0.2, 3, 2, 0.0))
    a = cluster.join_config("a", strategy=shared, cache=cache)
    b = cluster.join_config("b", host="127.0.0.9", strategy=shared, cache=cache)
    a.strategy.local_tail_ms = 1000.0  # what a test does to one running node leaves the others alone
    assert (b.strategy.local_tail_ms, shared.local_tail_ms) == (5.0, 5.0)
    assert (
        a.cache
        == b.cache
        == CacheConfig(share=False, threshold=0.2, k=3, votes=2, min_confidence=0.0, radius=(0.0, 0.0))
    )
    assert (a.network.mdns, a.network.host, b.network.host) == (False, "127.0.0.1", "127.0.0.9")
    assert a.secret == b.secret == cluster.secret
