"""Read-only status, Prometheus metrics and the live dashboard of a node, on its own aiohttp server.

Routes (all ``GET``; nothing here changes state)::

    /status          JSON: the node, its view of every peer, cache figures, requests by source, bytes
    /metrics         Prometheus text (or OpenMetrics when asked), from a per-node CollectorRegistry
    /                the dashboard page (assets under /static/, no CDN, works offline)
    /events          server-sent events: a "hello" (status + history), then a "snapshot" about once a second
    /static/<file>   dashboard.html, dashboard.js, dashboard.css from the package

Access: a request from a loopback address is served (if its ``Host`` header names this machine, so a web
page cannot reach it through DNS rebinding). Any other client must present the read token, as
``Authorization: Bearer <token>`` or ``?token=<token>``::

    read token = lowercase hex of HMAC-SHA256(key=UTF-8 cluster secret, msg=b"ccied-p2p/1 read-token")[:32]
    e.g.  printf %s 'ccied-p2p/1 read-token' | openssl dgst -sha256 -hmac "$CCIED_SECRET"  (first 32 hex)

The token only reads: it is not the secret and cannot join the cluster. A node without a secret (insecure
mode) serves loopback only. A missing token gets 401, a wrong one (from anywhere) 403; each refusal is logged
(rate-limited) and counted in ``ccied_http_refused_total``. Connections the node's guard refused or closed
(caps, header and idle timeouts) are counted in ``ccied_connections_refused_total`` by reason.

Parts: :mod:`~ccied_p2p.runtime.observe.access` (who may read), :mod:`~ccied_p2p.runtime.observe.metrics`
(Prometheus figures read at scrape time), :mod:`~ccied_p2p.runtime.observe.status` (:class:`Observer`: counters,
history and the status document), :mod:`~ccied_p2p.runtime.observe.http` (the routes and :func:`install`).
"""

from __future__ import annotations

from ccied_p2p.runtime.observe.access import READ_TOKEN_LABEL, Access, check_access, read_token
from ccied_p2p.runtime.observe.http import OBSERVER_KEY, ROUTES, install
from ccied_p2p.runtime.observe.metrics import STAGES
from ccied_p2p.runtime.observe.status import Observer

__all__ = [
    "OBSERVER_KEY",
    "READ_TOKEN_LABEL",
    "ROUTES",
    "STAGES",
    "Access",
    "Observer",
    "check_access",
    "install",
    "read_token",
]
