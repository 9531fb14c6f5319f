"""Status, metrics, the live channel and access control of the observation routes, on real sockets.

Three nodes in-process on 127.0.0.1 (seeds, no mDNS); the non-loopback access tests run a client inside a
network namespace this test creates (root and ``ip netns``; skipped otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ccied_p2p import datasets
from ccied_p2p.logs import NodeNameFilter, bind_node, node_name, setup_logging
from ccied_p2p.observe_cli import collect, dashboard, render_status
from ccied_p2p.runtime.config import NetworkConfig
from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
from ccied_p2p.runtime.observe import OBSERVER_KEY, check_access, read_token
from ccied_p2p.split import SplitModel
from ccied_p2p.testing.wait import until

SECRET = "test-secret-0123456789"
pytestmark = pytest.mark.network


def _config(name: str, *, seeds: Sequence[str] = (), host: str = "127.0.0.1") -> NodeConfig:
    return NodeConfig(name=name, secret=SECRET, network=NetworkConfig(host=host, mdns=False, seeds=seeds))


@pytest.fixture
async def trio(split: SplitModel) -> AsyncIterator[tuple[Node, Node, Node]]:
    async with (
        Node(split, _config("a")) as a,
        Node(split, _config("b", seeds=[a.address])) as b,
        Node(split, _config("c", seeds=[a.address])) as c,
    ):
        nodes = (a, b, c)
        for n in nodes:  # a nearest-neighbour cache: the same input again is a hit, whatever the defaults
            n.cache.k, n.cache.votes, n.cache.threshold = 1, 1, 0.004
        await until(
            lambda: (
                len(a.links) == 2
                and all(
                    len(n.peers) == 2 and all(m.state.value == "alive" for m in n.peers.values())
                    for n in nodes
                )
            )
        )
        yield a, b, c


async def _get(
    session: aiohttp.ClientSession, node: Node, path: str, **kw: Any
) -> tuple[int, dict[str, str], str]:
    async with session.get(f"http://{node.address}{path}", **kw) as resp:
        return resp.status, dict(resp.headers), await resp.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str
) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == metric and all(dict(lab).get(k) == want for k, want in labels.items())
    )


# ---------------------------------------------------------------- content


async def test_status_and_metrics_count_what_was_sent(
    trio: tuple[Node, Node, Node], data: datasets.Dataset
) -> None:
    a, b, c = trio
    a.config.strategy.local_tail_ms = 1000.0  # a slow device: every miss goes to a peer
    x = data.test_x[:12]
    first = await a.infer_batch(x, concurrency=1)
    again = await a.infer_batch(x, concurrency=1)  # the same inputs: answered by the cache
    assert isinstance(first, list)
    assert isinstance(again, list)
    results: list[InferenceResult] = first + again
    sources = Counter(r.source for r in results)
    peer_answers = sum(n for s, n in sources.items() if s.startswith("peer:"))
    assert sources["cache"] >= 12, sources
    assert peer_answers >= 1, sources
    assert sum(sources.values()) == 24

    async with aiohttp.ClientSession() as session:
        code, headers, body = await _get(session, a, "/status")
        assert code == 200
        assert headers["Content-Type"].startswith("application/json")
        st = json.loads(body)
        code, headers, text = await _get(session, a, "/metrics")
        assert code == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        code, _, text_b = await _get(session, b, "/metrics")
        code_c, _, text_c = await _get(session, c, "/metrics")
        assert code == code_c == 200

    # /status: the node, its peers, the cache and the requests by source
    assert st["node"]["name"] == "a"
    assert st["node"]["id"] == a.node_id.hex()
    assert st["node"]["fingerprint"] == a.split.fingerprint
    assert st["node"]["split"] == a.split.split_at
    assert st["node"]["address"] == a.address
    assert st["node"]["uptime_s"] > 0
    assert st["node"]["secure"]
    peers = {p["name"]: p for p in st["peers"]}
    assert set(peers) == {"b", "c"}
    for node in (b, c):
        p = peers[node.config.name]
        assert p["state"] == "alive"
        assert p["address"] == node.address
        assert p["id"] == node.node_id.hex()
        assert p["compatible"]
        assert p["link"] is not None
        assert p["last_heard_s"] is not None
        assert p["last_heard_s"] < 2.0
        assert p["load"] is not None
        assert p["cache"] is not None
        assert p["requests"] == sources[f"peer:{node.config.name}"]
    req = st["requests"]
    assert req["total"] == 24
    assert req["failed"] == 0
    assert {s: v["count"] for s, v in req["by_source"].items()} == dict(sources)
    for s, v in req["by_source"].items():
        assert v["latency_ms"]["window"] == sources[s]
        assert 0 < v["latency_ms"]["p50"] <= v["latency_ms"]["p90"] <= v["latency_ms"]["p99"]
    assert req["by_kind"] == {"cache": sources["cache"], "local": sources["local"], "peer": peer_answers}
    cache = st["cache"]
    assert cache["hits"] == sources["cache"]
    assert cache["misses"] == 24 - sources["cache"]
    assert cache["hit_rate"] == pytest.approx(sources["cache"] / 24, abs=1e-4)
    assert cache["entries"] == len(a.cache)
    assert cache["false_hit_budget"] == {
        "threshold": pytest.approx(a.cache.threshold),
        "k": a.cache.k,
        "votes": a.cache.votes,
        "min_confidence": pytest.approx(a.cache.min_confidence),
    }
    sent = sum(r.bytes_sent for r in results)
    raw = sum(r.bytes_raw for r in results)
    assert st["bytes"]["activation_sent"] == sent
    assert st["bytes"]["activation_raw"] == raw
    assert 0 < sent < st["bytes"]["activation_raw_offloaded"] < raw
    assert st["bytes"]["saved"] == raw - sent
    assert st["gossip"]["states"] == {"alive": 2, "suspect": 0, "dead": 0, "left": 0}
    assert st["gossip"]["rounds"] > 0
    assert st["auth_failures"] == 0

    # /metrics: the same figures through prometheus-client, in a registry of a's own
    m = _samples(text)
    assert _total(m, "ccied_requests_total") == 24
    assert _total(m, "ccied_requests_total", source="cache", outcome="ok") == sources["cache"]
    for name in ("b", "c"):
        assert _total(m, "ccied_requests_total", source="peer", peer=name) == sources[f"peer:{name}"]
    assert _total(m, "ccied_requests_total", outcome="error") == 0
    for kind, n in (("cache", sources["cache"]), ("peer", peer_answers)):
        assert _total(m, "ccied_request_duration_seconds_count", stage="total", source=kind) == n
        assert _total(m, "ccied_request_duration_seconds_count", stage="head", source=kind) == n
    assert _total(m, "ccied_request_duration_seconds_count", stage="transfer", source="peer") == peer_answers
    assert _total(m, "ccied_request_duration_seconds_count", stage="encode", source="peer") == peer_answers
    assert _total(m, "ccied_cache_hits_total") == sources["cache"]
    assert _total(m, "ccied_cache_misses_total") == 24 - sources["cache"]
    assert _total(m, "ccied_cache_entries") == len(a.cache)
    assert _total(m, "ccied_cache_evictions_total") == 0
    assert _total(m, "ccied_activation_bytes_sent_total") == sent
    assert _total(m, "ccied_activation_bytes_raw_total") == raw
    assert _total(m, "ccied_peers", state="alive") == 2
    assert _total(m, "ccied_peers", state="dead") == 0
    assert _total(m, "ccied_peer_state", peer="b", state="alive") == 1
    assert _total(m, "ccied_link_bytes_sent_total") >= sent
    assert _total(m, "ccied_link_bytes_received_total") > 0
    assert _total(m, "ccied_gossip_rounds_total") > 0
    assert _total(m, "ccied_auth_failures_total") == 0
    assert _total(m, "ccied_node_info", name="a", fingerprint=a.split.fingerprint) == 1
    # b and c computed exactly the tails a sent them, and count nothing of a's requests
    served = {name: _total(_samples(t), "ccied_served_total") for name, t in (("b", text_b), ("c", text_c))}
    assert served == {"b": sources["peer:b"], "c": sources["peer:c"]}
    assert _total(_samples(text_b), "ccied_requests_total") == 0


async def test_events_push_snapshots_and_end_with_the_node(split: SplitModel, data: datasets.Dataset) -> None:
    node = Node(split, _config("solo"))
    await node.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{node.address}/events") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            events: list[tuple[str, dict[str, Any]]] = []
            kind = ""
            start = time.monotonic()
            async with asyncio.timeout(6):
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append((kind, json.loads(line[6:])))
                        if kind == "hello":
                            await node.infer_batch(data.test_x[:3], concurrency=1)
                        if len(events) == 3:
                            break
            took = time.monotonic() - start
            assert [k for k, _ in events] == ["hello", "snapshot", "snapshot"]
            assert events[0][1]["status"]["node"]["name"] == "solo"
            assert "history" in events[0][1]
            last = events[-1][1]
            assert last["status"]["requests"]["total"] == 3
            assert last["sample"] is not None
            assert last["sample"]["nodes"]["solo"]["state"] == "alive"
            assert 1.5 < took < 20.0, f"two snapshots took {took:.2f} s: expected about one a second"
            # The node closes promptly with a dashboard still connected, and the stream ends.
            start = time.monotonic()
            await node.close()
            assert time.monotonic() - start < 3.0
            with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                async with asyncio.timeout(3.0):  # a stream left hanging fails with TimeoutError
                    async for _ in resp.content:
                        pass
    finally:
        await node.close()


async def test_dashboard_page_and_assets(split: SplitModel) -> None:
    async with Node(split, _config("web")) as node, aiohttp.ClientSession() as session:
        code, headers, page = await _get(session, node, "/")
        assert code == 200
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert '<script src="/static/dashboard.js">' in page
        assert "{{" not in page
        assert "web" in page
        assert "http://" not in page.replace(f"http://{node.address}", "")  # nothing from elsewhere
        for name, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            code, headers, body = await _get(session, node, f"/static/{name}")
            assert code == 200
            assert headers["Content-Type"].startswith(ctype)
            assert len(body) > 500
            assert "https://" not in body
            assert body.replace("http://www.w3.org/2000/svg", "").count("http://") == 0
        for bad in ("/static/nope.js", "/static/..%2Fobserve.py", "/static/.hidden.js", "/static/x.py"):
            code, _, _ = await _get(session, node, bad)
            assert code == 404, bad


def _received(node: Node, peer: str) -> int:
    traffic = node.app[OBSERVER_KEY].traffic().get(peer)
    return 0 if traffic is None else traffic.bytes_received


async def test_a_killed_peer_turns_dead_in_status_and_metrics(split: SplitModel) -> None:
    async with Node(split, _config("watcher")) as node:
        env = {**os.environ, "CCIED_SECRET": SECRET}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ccied_p2p.cli", "serve", "--model", "lenet", "--data", "mnist-5k",
            "--amount", "0.5", "--name", "victim", "--no-mdns", "--seeds", node.address,
            stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            async with asyncio.timeout(120):
                while not (await child.stdout.readline()).startswith(b"READY"):
                    pass
            await until(lambda: "victim" in node.peers and node.peers["victim"].state.value == "alive", 10)
            # Byte counters of a link are sampled every gossip round (< 0.25 s) unless the node reports
            # links as they open and close (Observer.on_link_opened/closed): let one round see it.
            # ... and one frame from the victim arrive, or the link may close having received nothing.
            await until(lambda: _received(node, "victim") > 0, 5)
            child.kill()  # SIGKILL: no leave, no goodbye; only gossip can tell
            await child.wait()
            await until(lambda: node.peers["victim"].state.value == "dead", 10)
            async with aiohttp.ClientSession() as session:
                st = json.loads((await _get(session, node, "/status"))[2])
                m = _samples((await _get(session, node, "/metrics"))[2])
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    (victim,) = st["peers"]
    assert victim["name"] == "victim"
    assert victim["state"] == "dead"
    assert victim["link"] is None
    assert victim["last_heard_s"] > 0.1
    assert st["gossip"]["states"]["dead"] == 1
    assert _total(m, "ccied_peers", state="dead") == 1
    assert _total(m, "ccied_peers", state="alive") == 0
    assert _total(m, "ccied_peer_state", peer="victim", state="dead") == 1
    assert _total(m, "ccied_member_events_total", kind="dead") == 1
    assert _total(m, "ccied_link_bytes_received_total", peer="victim") > 0  # kept after the link closed


async def test_link_hooks_count_each_link_once(trio: tuple[Node, Node, Node]) -> None:
    a, b, _c = trio
    obs = a.app[OBSERVER_KEY]
    link = a.links[b.node_id]
    obs.poll_links(time.monotonic())
    assert obs.traffic()["b"].bytes_sent == link.stats.bytes_sent > 0
    obs.on_link_closed(a, link)  # what the node calls when a link ends
    frozen = obs.traffic()["b"].bytes_sent
    obs.on_link_closed(a, link)
    obs.poll_links(time.monotonic())
    obs.on_link_opened(a, link)
    assert obs.traffic()["b"].bytes_sent == frozen


# ---------------------------------------------------------------- access


def test_read_token_is_the_documented_hmac() -> None:
    want = hmac.new(SECRET.encode(), b"ccied-p2p/1 read-token", hashlib.sha256).hexdigest()[:32]
    assert read_token(SECRET) == want
    assert len(want) == 32
    assert read_token(SECRET + "x") != want


@pytest.mark.parametrize(
    ("remote", "host", "token", "secure", "status"),
    [
        ("127.0.0.1", "127.0.0.1:8080", None, True, 200),
        ("127.0.0.2", "localhost:1", None, True, 200),
        ("::1", "[::1]:8080", None, False, 200),
        ("::ffff:127.0.0.1", None, None, True, 200),
        ("127.0.0.1", "evil.example:8080", None, True, 403),  # DNS rebinding
        ("127.0.0.1", "127.0.0.1", "0" * 32, True, 403),  # a wrong token is refused even from loopback
        ("10.1.2.3", "10.0.0.1:80", None, True, 401),
        ("10.1.2.3", "10.0.0.1:80", "0" * 32, True, 403),
        ("10.1.2.3", "10.0.0.1:80", "good", True, 200),
        ("10.1.2.3", "evil.example", "good", True, 200),  # the token proves intent; Host is not checked
        ("10.1.2.3", "10.0.0.1:80", None, False, 403),  # insecure: loopback only
        ("10.1.2.3", "10.0.0.1:80", "good", False, 403),
        ("192.168.1.5", None, "", True, 401),
        (None, None, None, True, 403),
        ("not-an-ip", None, None, True, 403),
    ],
)
def test_access_decisions(
    remote: str | None, host: str | None, token: str | None, secure: bool, status: int
) -> None:
    expected = read_token(SECRET) if secure else None
    presented = read_token(SECRET) if token == "good" else token
    decision = check_access(remote, host, presented, expected, {"10.0.0.1"})
    assert decision.status == status, decision
    assert decision.allowed == (status == 200)


async def test_loopback_refusals_are_logged_and_nothing_changes_state(
    split: SplitModel, caplog: pytest.LogCaptureFixture
) -> None:
    async with Node(split, _config("guarded")) as node, aiohttp.ClientSession() as session:
        with caplog.at_level(logging.WARNING, logger="ccied_p2p.runtime.observe"):
            code, _headers, body = await _get(session, node, "/status?token=" + "f" * 32)
        assert code == 403
        assert json.loads(body)["error"] == "wrong read token"
        assert any(
            "refused GET /status" in r.getMessage() and "wrong read token" in r.getMessage()
            for r in caplog.records
        )
        code, _, _ = await _get(session, node, "/status", headers={"Host": "attacker.example"})
        assert code == 403
        code, _, _ = await _get(
            session, node, "/metrics", headers={"Authorization": f"Bearer {read_token(SECRET)}"}
        )
        assert code == 200
        for path in ("/status", "/metrics", "/", "/events"):
            async with session.post(f"http://{node.address}{path}") as resp:
                assert resp.status == 405, path
        m = _samples((await _get(session, node, "/metrics"))[2])
        assert _total(m, "ccied_http_refused_total", reason="wrong_token") == 1
        assert _total(m, "ccied_http_refused_total", reason="bad_host") == 1
        assert node.app[OBSERVER_KEY].node is node


def _netns_available() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A namespace joined to the host by a veth pair: (namespace, host-side address, namespace address)."""
    reason = _netns_available()
    if reason:
        pytest.skip(f"non-loopback access test {reason}")
    tag = os.getpid() % 100_000
    ns, host_if, ns_if = f"ccobs{tag}", f"cco{tag}h", f"cco{tag}n"
    net = 20 + os.getpid() % 200
    host_ip, ns_ip = f"10.213.{net}.1", f"10.213.{net}.2"
    try:
        _ip("netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


_CLIENT = r"""
import json, sys, urllib.request, urllib.error
out = []
for url, auth in json.loads(sys.argv[1]):
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            out.append([r.status, r.read(200000).decode("utf-8", "replace")])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read().decode("utf-8", "replace")])
print(json.dumps(out))
"""


async def _from_namespace(ns: str, requests: list[tuple[str, str | None]]) -> list[tuple[int, str]]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-I", "-c", _CLIENT, json.dumps(requests),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return [(int(code), body) for code, body in json.loads(out)]


async def test_non_loopback_clients_need_the_read_token(
    split: SplitModel, netns: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ns, host_ip, ns_ip = netns
    token = read_token(SECRET)
    async with Node(split, _config("lan", host=host_ip)) as node:
        base = f"http://{node.address}"
        with caplog.at_level(logging.WARNING, logger="ccied_p2p.runtime.observe"):
            answers = await _from_namespace(
                ns,
                [
                    (f"{base}/status", None),
                    (f"{base}/metrics", None),
                    (f"{base}/status", "Bearer " + "0" * 32),
                    (f"{base}/status?token={'1' * 32}", None),
                    (f"{base}/status", f"Bearer {token}"),
                    (f"{base}/metrics", f"Bearer {token}"),
                    (f"{base}/status?token={token}", None),
                    (f"{base}/?token={token}", None),
                    (f"{base}/static/dashboard.js?token={token}", None),
                ],
            )
        codes = [code for code, _ in answers]
        assert codes == [401, 401, 403, 403, 200, 200, 200, 200, 200], answers
        assert json.loads(answers[0][1])["error"].startswith("read token required")
        assert json.loads(answers[4][1])["node"]["name"] == "lan"
        assert "ccied_requests_total" in answers[5][1] or "ccied_node_info" in answers[5][1]
        assert f'src="/static/dashboard.js?token={token}"' in answers[7][1]
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 4, refused
        assert all(ns_ip in line for line in refused), refused

    # A node without a secret serves loopback only, token or not.
    async with Node(
        split, NodeConfig(name="open", insecure=True, network=NetworkConfig(host=host_ip, mdns=False))
    ) as node:
        base = f"http://{node.address}"
        answers = await _from_namespace(ns, [(f"{base}/status", None), (f"{base}/status", f"Bearer {token}")])
        assert [code for code, _ in answers] == [403, 403]
        assert "loopback clients only" in answers[0][1]


# ---------------------------------------------------------------- logging and the CLI helpers


async def test_log_records_carry_the_node_name_into_tasks() -> None:
    stream = io.StringIO()
    handler = setup_logging("INFO", "json", stream=stream)
    try:
        log = logging.getLogger("ccied_p2p.test")

        async def child() -> None:
            log.info("from a task")

        with bind_node("node-x"):
            task = asyncio.ensure_future(child())
        log.info("outside")
        await task
        assert node_name.get() == "-"
        rows = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(r["node"], r["message"]) for r in rows] == [("-", "outside"), ("node-x", "from a task")]
        assert {"time", "level", "logger"} <= set(rows[0])
        text = io.StringIO()
        setup_logging("INFO", "text", stream=text)
        with bind_node("node-y"):
            log.warning("hello %s", "there")
        assert "[node-y] ccied_p2p.test: hello there" in text.getvalue()
        assert stream.getvalue().count("\n") == 2  # the first handler was replaced, not stacked
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        assert NodeNameFilter().filter(record)
        assert getattr(record, "node", None) == "-"
    finally:
        for h in list(logging.getLogger().handlers):
            if type(h) is type(handler):
                logging.getLogger().removeHandler(h)


async def test_status_collects_the_cluster_from_one_address(
    trio: tuple[Node, Node, Node], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = trio
    rows = await collect([a.address], timeout=2.0)
    assert sorted(r.name for r in rows) == ["a", "b", "c"]
    assert all(r.status is not None and r.seen_as == {"alive": 2} for r in rows)
    table = render_status(rows)
    for node in (a, b, c):
        assert node.address in table
        assert node.split.fingerprint[:12] in table
    args = argparse.Namespace(
        node=a.address, name=None, open=False, token=None, secret=None, secret_file=None
    )
    assert dashboard(args) == 0
    assert capsys.readouterr().out.strip() == f"http://{a.address}/"
