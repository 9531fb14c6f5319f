"""Logging with the node's name in every record, as text for people or JSON lines for machines.

A :class:`~contextvars.ContextVar` carries the name: a node sets it while it starts, so every task it spawns
(and the server's connection handlers) inherits it, and several nodes in one process log apart::

    token = node_name.set("laptop-a")     # or: with bind_node("laptop-a"): ...
    ...                                   # tasks created here carry "laptop-a"
    node_name.reset(token)

:class:`NodeNameFilter` copies the name onto each record as ``record.node`` (``"-"`` outside any node);
:func:`setup_logging` installs it with a text or JSON formatter on the root logger (the CLI's
``--log-level`` / ``--log-format``). Applications with their own handlers add ``NodeNameFilter()`` to them.

:class:`RateLimitedLog` keeps what hostile traffic makes a node log bounded: refused connections, failed
handshakes, refused HTTP requests and bad frames are each logged at most ``burst`` times per ``window``
seconds, then summed up in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import IO, Any, Final, Literal

__all__ = [
    "JSON_FIELDS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "NodeNameFilter",
    "RateLimitedLog",
    "bind_node",
    "node_name",
    "setup_logging",
]

node_name: ContextVar[str] = ContextVar("ccied_node_name", default="-")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"
JSON_FIELDS: Final = ("time", "level", "node", "logger", "message", "task", "exc")

LogFormat = Literal["text", "json"]


@contextlib.contextmanager
def bind_node(name: str) -> Iterator[None]:
    """Within the block (and in every task created in it) records carry ``name``."""
    token = node_name.set(name)
    try:
        yield
    finally:
        node_name.reset(token)


class NodeNameFilter(logging.Filter):
    """Set ``record.node`` from the context (unless the call passed ``extra={"node": ...}``); never drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = node_name.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, node, logger, message, task, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "node": getattr(record, "node", node_name.get()),
            "logger": record.name,
            "message": record.getMessage(),
        }
        task = getattr(record, "taskName", None)
        if task:
            out["task"] = task
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


class RateLimitedLog:
    """At most ``burst`` records per ``window`` seconds for each key, then one line with how many were dropped.

    A refusal must be visible, but one line per refused connection lets an attacker fill the disk. The
    summary of a window is written when the next record of that key arrives (the counters that metrics
    export stay exact either way).
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # key -> [window start, logged, suppressed]
        self.suppressed = 0  # in total, over the helper's life

    def allow(self, key: str) -> bool:
        """Whether a record of ``key`` may be written now (counts it as written or suppressed)."""
        now = self._clock()
        win = self._windows.get(key)
        if win is None or now - win[0] >= self.window:
            if win is not None and win[2]:
                self.logger.warning(
                    "%d more %r messages suppressed in the last %.0f s (at most %d per %g s)",
                    int(win[2]),
                    key,
                    now - win[0],
                    self.burst,
                    self.window,
                )
            win = self._windows[key] = [now, 0, 0]
        if win[1] >= self.burst:
            win[2] += 1
            self.suppressed += 1
            return False
        win[1] += 1
        return True

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` is over its budget; returns whether it was written."""
        if not self.allow(key):
            return False
        self.logger.log(level, msg, *args, stacklevel=2)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        if not self.allow(key):
            return False
        self.logger.warning(msg, *args, stacklevel=2)
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup_logging` installed, so a second call replaces it."""


def setup_logging(
    level: int | str = "WARNING", fmt: LogFormat | str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` as ``fmt`` (``"text"`` or ``"json"``); idempotent."""
    if fmt not in ("text", "json"):
        from ccied_p2p.errors import ConfigError

        raise ConfigError(f"log format must be 'text' or 'json', got {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(NodeNameFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
