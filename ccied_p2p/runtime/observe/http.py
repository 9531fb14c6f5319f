"""The observation routes on the node's aiohttp app: /status, /metrics, the dashboard and its /events stream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import importlib.resources
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from aiohttp import web

from ccied_p2p.logs import RateLimitedLog

if TYPE_CHECKING:
    from ccied_p2p.runtime.node import Node
from ccied_p2p.runtime.observe.access import Access, check_access, presented_token, read_token
from ccied_p2p.runtime.observe.status import SAMPLE_INTERVAL, Observer

__all__ = ["MAX_SUBSCRIBERS", "OBSERVER_KEY", "ROUTES", "install"]

log = logging.getLogger(__name__)

ROUTES: Final = ("/", "/status", "/metrics", "/events", "/static/{name}")
MAX_SUBSCRIBERS: Final = 16  # concurrent /events streams per node
_STATIC_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_COMMON_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_PAGE_HEADERS: Final = {
    **_COMMON_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


OBSERVER_KEY: Final = web.AppKey("ccied_observer", Observer)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Routes:
    def __init__(self, node: Node, observer: Observer) -> None:
        self.node = node
        self.observer = observer
        secret = node.config.secret
        self.token = read_token(secret) if secret is not None else None
        self.stop = asyncio.Event()
        self.subscribers = 0
        self._static: dict[str, bytes] = {}
        self._refusal_log = RateLimitedLog(log)

    # ------------------------------------------------------------------ access

    def _allowed_hosts(self) -> set[str]:
        cfg = self.node.config
        # Debian maps the host name to 127.0.1.1, so a browser on this machine may use it.
        return {
            h.lower() for h in (cfg.network.host, cfg.network.advertise_host, self.node.host) if h
        } | self._machine

    @functools.cached_property
    def _machine(self) -> set[str]:
        name = socket.gethostname().lower()
        return {name, f"{name}.local"} if name else set()

    def guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            remote = str(peer[0]) if isinstance(peer, tuple | list) and peer else None
            access = check_access(
                remote,
                request.headers.get("Host"),
                presented_token(request),
                self.token,
                self._allowed_hosts(),
            )
            if not access.allowed:
                self._refused(request, remote, access)
                headers = dict(_COMMON_HEADERS)
                if access.status == 401:
                    headers["WWW-Authenticate"] = 'Bearer realm="ccied-p2p read"'
                return web.json_response({"error": access.reason}, status=access.status, headers=headers)
            return await handler(request)

        return guarded

    def _refused(self, request: web.Request, remote: str | None, access: Access) -> None:
        reason = {401: "missing_token", 403: "forbidden"}.get(access.status, "other")
        if "wrong read token" in access.reason:
            reason = "wrong_token"
        elif "Host" in access.reason:
            reason = "bad_host"
        self.observer.http_refused.labels(reason).inc()
        self._refusal_log.warning(
            "http",
            "[%s] refused %s %s from %s: %s (%d)",
            self.node.config.name,
            request.method,
            request.path,
            remote,
            access.reason,
            access.status,
        )

    # ------------------------------------------------------------------ handlers

    async def status(self, request: web.Request) -> web.StreamResponse:
        body = self.observer.status()
        if request.query.get("history") in ("1", "true"):
            body["history"] = list(self.observer.history)
        return web.json_response(body, headers=_COMMON_HEADERS, dumps=_dumps)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self.observer.metrics(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={**_COMMON_HEADERS, "Content-Type": content_type})

    async def page(self, request: web.Request) -> web.StreamResponse:
        token = presented_token(request) if "token" in request.query else None
        query = "" if token is None else "?token=" + quote(token, safe="")
        text = self._asset("dashboard.html").decode("utf-8")
        text = text.replace("{{query}}", html.escape(query)).replace(
            "{{name}}", html.escape(self.node.config.name)
        )
        return web.Response(text=text, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not _STATIC_NAME.fullmatch(name) or suffix not in _CONTENT_TYPES:
            raise web.HTTPNotFound()
        try:
            body = self._asset(name)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, headers={**_COMMON_HEADERS, "Content-Type": _CONTENT_TYPES[suffix]})

    def _asset(self, name: str) -> bytes:
        data = self._static.get(name)
        if data is None:
            path = importlib.resources.files("ccied_p2p").joinpath("static").joinpath(name)
            if not path.is_file():
                raise FileNotFoundError(name)
            data = self._static[name] = path.read_bytes()
        return data

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.subscribers >= MAX_SUBSCRIBERS:
            return web.json_response(
                {"error": f"at most {MAX_SUBSCRIBERS} live dashboards per node"},
                status=503,
                headers={**_COMMON_HEADERS, "Retry-After": "5"},
            )
        resp = web.StreamResponse(
            headers={**_COMMON_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        self.subscribers += 1
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            hello = {"status": self.observer.cached_status(), "history": list(self.observer.history)}
            await resp.write(_event("hello", hello))
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAMPLE_INTERVAL):
                        await self.stop.wait()
                if self.stop.is_set():
                    break
                history = self.observer.history
                snapshot = {
                    "status": self.observer.cached_status(),
                    "sample": history[-1] if history else None,
                }
                await resp.write(_event("snapshot", snapshot))
        except ConnectionError:
            pass  # the dashboard went away
        finally:
            self.subscribers -= 1
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        self.stop.set()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {_dumps(data)}\n\n".encode()


def install(app: web.Application, node: Node) -> Observer:
    """Add the observability routes to ``app`` and register the node's metrics observer."""
    observer = Observer(node)
    node.observers.append(observer)
    routes = _Routes(node, observer)
    app[OBSERVER_KEY] = observer
    app.on_shutdown.append(routes.on_shutdown)
    app.router.add_get("/", routes.guard(routes.page))
    app.router.add_get("/status", routes.guard(routes.status))
    app.router.add_get("/metrics", routes.guard(routes.metrics))
    app.router.add_get("/events", routes.guard(routes.events), allow_head=False)
    app.router.add_get("/static/{name}", routes.guard(routes.static))
    return observer
