"""A blocking browser-level DevTools (CDP) link over a WebSocket, and helpers for its replies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from .._util import require

__all__ = ["DevTools", "InstanceBroken", "NotYet", "devtools_url", "origin_of", "pages"]


class InstanceBroken(Exception):
    """The instance died or stopped answering; it must be killed and replaced."""


class NotYet(InstanceBroken):
    """A state chromedriver has not caught up with yet; raised for good once waited out."""


class DevTools:
    """A blocking browser-level DevTools (CDP) connection over a WebSocket."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        websocket = require("websocket", "chrome", "websocket-client")
        self._ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command to the browser and return its result."""
        return self.call_many([(method, params)])[0]

    def call_many(
        self, commands: Sequence[tuple[str, dict[str, Any]]], session_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Send every command at once, then collect the replies (in command order).

        The browser works on them concurrently (a renderer starting for one, a context
        being torn down for another), which a call-then-wait sequence would serialize.
        With ``session_id`` the commands go to that attached target (a tab) instead of
        the browser.
        """
        ids: dict[int, int] = {}
        for index, (method, params) in enumerate(commands):
            self._next_id += 1
            ids[self._next_id] = index
            message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
            if session_id is not None:
                message["sessionId"] = session_id
            self._ws.send(json.dumps(message))
        results: list[dict[str, Any] | None] = [None] * len(commands)
        pending = len(commands)
        while pending:
            reply = json.loads(self._ws.recv())
            found = ids.get(reply.get("id", -1))
            if found is None:
                continue  # an event or a late reply: not ours
            index = found
            if "error" in reply:
                raise InstanceBroken(f"DevTools {commands[index][0]} failed: {reply['error']}")
            results[index] = reply.get("result", {})
            pending -= 1
        return [r if r is not None else {} for r in results]

    def close(self) -> None:
        """Close the WebSocket; never raises."""
        with contextlib.suppress(Exception):
            self._ws.close()


def devtools_url(http_address: str, timeout: float) -> str:
    """The browser's DevTools WebSocket URL, asked from its HTTP endpoint at ``host:port``."""
    import urllib.request  # only when an instance starts: keeps importing the pool light

    with urllib.request.urlopen(f"http://{http_address}/json/version", timeout=timeout) as resp:
        url: str = json.load(resp)["webSocketDebuggerUrl"]
    return url


def pages(targets: dict[str, Any]) -> list[dict[str, Any]]:
    """The page targets (tabs) in a ``Target.getTargets`` reply."""
    return [info for info in targets["targetInfos"] if info.get("type") == "page"]


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, else None."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None
