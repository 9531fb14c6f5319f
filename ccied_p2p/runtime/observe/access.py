"""Who may read a node's observation routes: loopback clients naming this machine, or the read token.

The rules and the token's derivation are in :mod:`ccied_p2p.runtime.observe`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:
    pass


__all__ = ["READ_TOKEN_LABEL", "Access", "check_access", "presented_token", "read_token"]

log = logging.getLogger(__name__)

READ_TOKEN_LABEL: Final = b"ccied-p2p/1 read-token"


def read_token(secret: str) -> str:
    """The read token of a cluster secret: 32 lowercase hex digits (see the module docstring)."""
    return hmac.new(secret.encode("utf-8"), READ_TOKEN_LABEL, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Access:
    """Whether a request may read, the HTTP status if not, and why (for the log and the body)."""

    allowed: bool
    status: int
    reason: str


def _client_ip(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not remote:
        return None
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def _local_host(name: str, allowed_hosts: Collection[str]) -> bool:
    if name == "localhost" or name.endswith(".localhost") or name in allowed_hosts:
        return True
    ip = _client_ip(name)
    return ip is not None and ip.is_loopback


def check_access(
    remote: str | None,
    host_header: str | None,
    presented: str | None,
    expected: str | None,
    allowed_hosts: Collection[str] = (),
) -> Access:
    """Decide one request: client address, its Host header, the token it presented, the node's token.

    ``expected`` is None on a node without a secret; ``allowed_hosts`` are extra names of this node that a
    loopback client may use in ``Host`` (its bound and advertised addresses).
    """
    if presented:
        if expected is not None and hmac.compare_digest(presented.encode(), expected.encode()):
            return Access(True, 200, "read token")
        if expected is None:
            return Access(False, 403, "this node has no cluster secret and accepts no read token")
        return Access(False, 403, "wrong read token")
    ip = _client_ip(remote)
    if ip is None:
        return Access(False, 403, "unknown client address")
    if ip.is_loopback:
        if host_header and not _local_host(_host_name(host_header), allowed_hosts):
            return Access(False, 403, f"Host {host_header[:64]!r} is not this machine (DNS rebinding?)")
        return Access(True, 200, "loopback")
    if expected is None:
        return Access(False, 403, "insecure node (no cluster secret): loopback clients only")
    return Access(False, 401, "read token required for non-loopback clients")


def presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.query.get("token", "")
    return token or None
