"""``ccied-p2p status`` and ``ccied-p2p dashboard``: read the nodes' ``/status``; a table or the page URL.

Nodes come from mDNS (loopback by default, ``--interface all`` for the LAN) and ``--nodes host:port,...``;
the peers each node lists are asked too, so one reachable node is enough to see the cluster. A node on
another address needs the read token: ``--token``, or derived from ``--secret``/``--secret-file``/
``$CCIED_SECRET`` (see :func:`ccied_p2p.runtime.observe.read_token`); it is never sent to loopback nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import sys
import webbrowser
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ccied_p2p.errors import ConfigError

__all__ = [
    "NodeStatus",
    "add_dashboard_arguments",
    "add_status_arguments",
    "collect",
    "dashboard",
    "render_status",
    "status",
]

MAX_NODES = 256


@dataclass
class NodeStatus:
    """One node as ``status`` saw it: its ``/status`` document, or why there is none."""

    address: str
    name: str = ""
    status: dict[str, Any] | None = None
    error: str = ""
    seen_as: dict[str, int] = field(default_factory=dict)  # states other nodes hold for it

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "error": self.error or None,
            "seen_as": dict(self.seen_as),
            "status": self.status,
        }


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interface",
        action="append",
        default=None,
        help="mDNS interface address to browse (repeatable; 'all' for every one; default 127.0.0.1)",
    )
    p.add_argument("--no-mdns", action="store_true", help="do not browse mDNS (use --nodes)")
    p.add_argument(
        "--browse",
        type=float,
        default=1.5,
        help="seconds to listen for mDNS at most (default 1.5; it stops soon after a node answers)",
    )
    p.add_argument("--token", default=None, help="read token for non-loopback nodes")
    p.add_argument("--secret", default=None, help="cluster secret to derive the read token from")
    p.add_argument("--secret-file", default=None)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per HTTP request (default 2)")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    """The ``status`` command's options."""
    p.add_argument(
        "--nodes", action="append", default=[], help="host:port of nodes to ask (comma-separated, repeatable)"
    )
    _common(p)
    p.add_argument("--no-follow", action="store_true", help="do not also ask the peers the nodes list")
    if not any("--json" in a.option_strings for a in p._actions):
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    """The ``dashboard`` command's options."""
    p.add_argument("--node", default=None, help="host:port of the node (default: a local one found by mDNS)")
    p.add_argument("--name", default=None, help="pick the node with this name")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    _common(p)


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token", None):
        return str(args.token)
    secret = getattr(args, "secret", None)
    if not secret and getattr(args, "secret_file", None):
        secret = Path(args.secret_file).read_text().strip()
    secret = secret or os.environ.get("CCIED_SECRET")
    if not secret:
        return None
    from ccied_p2p.runtime.observe import read_token

    return read_token(secret)


def _interfaces(args: argparse.Namespace) -> str | tuple[str, ...]:
    chosen = getattr(args, "interface", None) or ["127.0.0.1"]
    return "all" if "all" in chosen else tuple(chosen)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SETTLE_S = 0.15


async def _browse(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, host:port) of every node mDNS finds."""
    if getattr(args, "no_mdns", False):
        return []
    from ccied_p2p.runtime.discovery import browse_once

    # Any one node lists the others (status collects through membership; dashboard wants one): stop listening
    # shortly after the first answer instead of always waiting out --browse.
    found = await browse_once(args.browse, _interfaces(args), settle=SETTLE_S)
    return [(p.name, f"{p.host}:{p.port}") for p in found]


async def _fetch(
    session: aiohttp.ClientSession, address: str, token: str | None, timeout: float
) -> tuple[dict[str, Any] | None, str]:
    host, port = _split_address(address)
    headers = {} if token is None or _is_loopback(host) else {"Authorization": f"Bearer {token}"}
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/status"
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                reason = ""
                with contextlib.suppress(aiohttp.ContentTypeError, json.JSONDecodeError, AttributeError):
                    reason = str((await resp.json()).get("error", ""))
                return None, f"HTTP {resp.status}" + (f": {reason}" if reason else "")
            body = await resp.json()
            if not isinstance(body, dict) or "node" not in body:
                return None, "not a ccied-p2p node"
            return body, ""
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, f"unreachable ({type(exc).__name__})"


async def collect(
    addresses: list[str],
    *,
    named: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 2.0,
    follow: bool = True,
) -> list[NodeStatus]:
    """Ask every address for ``/status`` (and, with ``follow``, every peer they list); one row per node."""
    names = dict(named or {})
    rows: dict[str, NodeStatus] = {}
    pending = list(dict.fromkeys(addresses))
    async with aiohttp.ClientSession() as session:
        while pending and len(rows) < MAX_NODES:
            batch = [a for a in pending if a not in rows][: MAX_NODES - len(rows)]
            pending = []
            results = await asyncio.gather(*(_fetch(session, a, token, timeout) for a in batch))
            for address, (body, error) in zip(batch, results, strict=True):
                row = NodeStatus(address, names.get(address, ""), body, error)
                if body is not None:
                    row.name = str(body["node"].get("name", row.name))
                    if follow:
                        for peer in body.get("peers", []):
                            names.setdefault(peer["address"], peer["name"])
                            if peer["address"] not in rows and peer["state"] in ("alive", "suspect"):
                                pending.append(peer["address"])
                rows[address] = row
            pending = [a for a in dict.fromkeys(pending) if a not in rows]
    seen_ids: set[str] = set()
    for key, row in list(rows.items()):
        if row.status is not None:
            node_id = str(row.status["node"]["id"])
            if node_id in seen_ids:
                del rows[key]  # the same node under a second address
            seen_ids.add(node_id)
    # Peers listed but not asked (dead, left, or beyond the limit) still get a row with the others' view.
    by_id: dict[str, Counter[str]] = {}
    listed: dict[str, tuple[str, str]] = {}
    for row in rows.values():
        if row.status is None:
            continue
        for peer in row.status.get("peers", []):
            by_id.setdefault(peer["id"], Counter())[peer["state"]] += 1
            listed.setdefault(peer["id"], (peer["address"], peer["name"]))
    answered = {str(r.status["node"]["id"]): r for r in rows.values() if r.status is not None}
    for node_id, counts in by_id.items():
        if node_id in answered:
            answered[node_id].seen_as = dict(counts)
            continue
        address, name = listed[node_id]
        found = rows.get(address)
        if found is None or (found.status is not None and found.status["node"]["id"] != node_id):
            key = address if found is None else f"{address}#{node_id[:8]}"
            found = rows[key] = NodeStatus(address, name, None, "not asked")
        found.name = found.name or name
        found.seen_as = dict(counts)
    return sorted(rows.values(), key=lambda r: (r.name or "~", r.address))


def _fmt_rate(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def render_status(rows: list[NodeStatus]) -> str:
    """The table ``ccied-p2p status`` prints."""
    header = (
        f"{'name':<16} {'address':<21} {'fingerprint':<12} {'state':<12} {'seen as':<16} "
        f"{'load':<18} {'cache':>7} {'hit rate':>8} {'requests':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        seen = ",".join(f"{s}×{n}" for s, n in sorted(r.seen_as.items())) or "-"
        if r.status is None:
            state = max(r.seen_as, key=lambda s: r.seen_as[s]) if r.seen_as else "no answer"
            why = "known from its peers" if r.error == "not asked" else r.error
            lines.append(f"{r.name or '?':<16} {r.address:<21} {'-':<12} {state:<12} {seen:<16} {why}")
            continue
        st = r.status
        node = st["node"]
        load = node.get("load") or {}
        load_text = (
            f"q{load.get('queue_depth', 0)} {float(load.get('tail_ms') or 0):.2f}ms "
            f"{float(load.get('service_rate') or 0):.1f}/s"
            if load
            else "-"
        )
        cache = st.get("cache") or {}
        lines.append(
            f"{node['name']:<16} {node['address']:<21} {node['fingerprint'][:12]:<12} {'up':<12} {seen:<16} "
            f"{load_text:<18} {cache.get('entries', 0):>7} {_fmt_rate(cache.get('hit_rate')):>8} "
            f"{st['requests']['total']:>8}"
        )
    if not rows:
        lines.append("(no nodes found: start one, or pass --nodes host:port)")
    return "\n".join(lines)


def _addresses(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for item in getattr(args, "nodes", None) or []:
        for part in str(item).split(","):
            if part.strip():
                host, port = _split_address(part)
                out.append(f"{host}:{port}")
    return out


def status(args: argparse.Namespace) -> int:
    """``ccied-p2p status``: 0 if every node asked answered, 1 otherwise (or if none was found)."""

    async def run() -> list[NodeStatus]:
        found = await _browse(args)
        addresses = _addresses(args) + [a for _, a in found]
        return await collect(
            addresses,
            named={a: n for n, a in found},
            token=_token(args),
            timeout=args.timeout,
            follow=not getattr(args, "no_follow", False),
        )

    rows = asyncio.run(run())
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps({"nodes": [r.as_dict() for r in rows]}, indent=2) + "\n")
    else:
        sys.stdout.write(render_status(rows) + "\n")
    sys.stdout.flush()
    asked = [r for r in rows if r.error != "not asked"]
    return 0 if asked and all(r.status is not None for r in asked) else 1


def dashboard(args: argparse.Namespace) -> int:
    """``ccied-p2p dashboard``: print (and with ``--open`` open) the page URL of a node."""
    if args.node:
        host, port = _split_address(args.node)
        candidates = [(args.name or "", f"{host}:{port}")]
    else:
        candidates = asyncio.run(_browse(args))
        if args.name:
            candidates = [c for c in candidates if c[0] == args.name]
        candidates.sort(key=lambda c: (not _is_loopback(_split_address(c[1])[0]), c[0]))
    if not candidates:
        sys.stderr.write("ccied-p2p: no node found (start one, or pass --node host:port)\n")
        return 1
    host, port = _split_address(candidates[0][1])
    url = f"http://{host}:{port}/"
    token = _token(args)
    if token is not None and not _is_loopback(host):
        url += f"?token={token}"
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    if args.open and not webbrowser.open(url):
        sys.stderr.write("ccied-p2p: could not open a browser; open the URL above\n")
    return 0
