"""A real HTTP/1.1 keep-alive server on 127.0.0.1 for the scraper's tests and benchmark.

Each listening port models one platform. The server records, per port, how many requests
it was serving at once (current and maximum), when each request arrived and how often
each target was asked for, so tests assert on what really happened on the wire.

Routes (any route also takes ``?delay=<seconds>`` before answering):

- ``/page/<anything>[?size=N]``  200 with an N-byte HTML page (10 KB by default)
- ``/tiny/<anything>``            200 with a 4-byte body
- ``/status/<code>``             that status
- ``/throttle/<key>?n=K&retry_after=S[&date=1]``  429 + Retry-After (seconds or HTTP date)
  the first K times for that key, then 200
- ``/fail/<key>?n=K&status=C``   status C (503 by default) the first K times, then 200
- ``/drop/<key>?n=K``            close the connection without answering the first K times
- ``/hang``                      never answer
- ``/json``                      ``{"ok": true, "path": ...}``
- ``/redirect?to=<target>``      302 to ``<target>`` on the same port
- ``/echo``                      the request headers as JSON
- ``/cookie/set?name=N&value=V``  200 with ``Set-Cookie: N=V; Path=/``
- ``/cookie/redirect?name=N&value=V&to=T``  302 to T with that ``Set-Cookie``
- ``/chaos/<anything>?p503=&p429=&drop=&hang=&ra=``  a seeded random fault per request:
  503, 429 + ``Retry-After: ra``, a connection cut mid-body, a hang; 200 otherwise

Run it alone (for the benchmark, in its own process)::

    python3 tests/scrape_server.py --port 8765 [--delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import random
import threading
import time
from collections import defaultdict
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

PAGE_SIZE = 10 * 1024

_REASONS = {
    200: "OK",
    302: "Found",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _page(size: int) -> bytes:
    head = b"<html><body><p>"
    tail = b"</p></body></html>"
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def _response(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.append(f"Content-Length: {len(body)}")
    if not any(k.lower() == "content-type" for k, _ in headers):
        lines.append("Content-Type: text/html; charset=utf-8")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_DEFAULT_PAGE = _response(200, _page(PAGE_SIZE))
_TINY_PAGE = _response(200, b"tiny")


class _Stats:
    """What the server saw; read by tests from the test thread (appends are atomic)."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.current: dict[int, int] = defaultdict(int)
        self.max: dict[int, int] = defaultdict(int)
        self.total_current = 0
        self.total_max = 0
        self.arrivals: list[tuple[float, int, str]] = []
        self.hits: dict[str, int] = defaultdict(int)
        self.keys: dict[str, int] = defaultdict(int)
        #: (monotonic time, port, Retry-After seconds) of every 429 the chaos route sent.
        self.throttled: list[tuple[float, int, float]] = []
        self.faults: dict[str, int] = defaultdict(int)


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server, port: int) -> None:
        self.server = server
        self.port = port
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.pending: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.busy:
            self._done()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self._start()
            self.server.handle(self, method, target, headers)

    def _start(self) -> None:
        self.busy = True
        stats = self.server.stats
        stats.current[self.port] += 1
        if stats.current[self.port] > stats.max[self.port]:
            stats.max[self.port] = stats.current[self.port]
        stats.total_current += 1
        if stats.total_current > stats.total_max:
            stats.total_max = stats.total_current

    def _done(self) -> None:
        self.busy = False
        stats = self.server.stats
        stats.current[self.port] -= 1
        stats.total_current -= 1

    def send(self, payload: bytes) -> None:
        self.pending = None
        if self.closed or self.transport is None:
            return
        self._done()
        self.transport.write(payload)
        if self.buffer:
            self.data_received(b"")

    def cut(self, partial: bytes) -> None:
        """Send ``partial`` (a head promising more) and abort the connection."""
        if self.transport is not None and not self.closed:
            self.transport.write(partial)
        self.drop()

    def drop(self) -> None:
        self.pending = None
        if self.transport is not None and not self.closed:
            self.transport.abort()


class _Server:
    def __init__(self, delay: float, record: bool) -> None:
        self.delay = delay
        self.stats = _Stats(record)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rng = random.Random(1234)

    def handle(self, conn: _Connection, method: str, target: str, headers: dict[str, str]) -> None:
        stats = self.stats
        if stats.record:
            stats.arrivals.append((time.monotonic(), conn.port, target))
            stats.hits[target] += 1
        delay = self.delay
        if target.startswith("/page/") and "?" not in target:
            payload: bytes | None = _DEFAULT_PAGE
        elif target.startswith("/tiny/"):
            payload = _TINY_PAGE
        else:
            payload, extra = self._route(conn, method, target, headers)
            delay += extra
        if payload is None:
            return  # dropped or hanging
        if delay > 0:
            assert self.loop is not None
            conn.pending = self.loop.call_later(delay, conn.send, payload)
        else:
            conn.send(payload)

    def _route(
        self, conn: _Connection, method: str, target: str, headers: dict[str, str]
    ) -> tuple[bytes | None, float]:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        delay = float(query.get("delay", 0.0))
        stats = self.stats
        if path.startswith("/page/"):
            return _response(200, _page(int(query.get("size", PAGE_SIZE)))), delay
        if path.startswith("/status/"):
            return _response(int(path.split("/")[2]), b"status"), delay
        if path.startswith(("/throttle/", "/fail/", "/drop/")):
            kind = path.split("/")[1]
            stats.keys[path] += 1
            if stats.keys[path] <= int(query.get("n", 1)):
                if kind == "drop":
                    conn.drop()
                    return None, 0.0
                if kind == "fail":
                    return _response(int(query.get("status", 503)), b"unavailable"), delay
                seconds = float(query.get("retry_after", 1))
                if query.get("date"):
                    value = email.utils.formatdate(time.time() + seconds, usegmt=True)
                else:
                    value = str(int(seconds)) if seconds == int(seconds) else str(seconds)
                return _response(429, b"slow down", (("Retry-After", value),)), delay
            return _response(200, _page(1024)), delay
        if path == "/hang":
            return None, 0.0
        if path == "/json":
            body = json.dumps({"ok": True, "path": path}).encode()
            return _response(200, body, (("Content-Type", "application/json"),)), delay
        if path == "/redirect":
            return _response(302, b"", (("Location", query.get("to", "/page/r")),)), delay
        if path.startswith("/chaos/"):
            return self._chaos(conn, query), delay
        if path.startswith("/cookie/"):
            cookie = (
                ("Set-Cookie", f"{query.get('name', 'c')}={query.get('value', '1')}; Path=/"),
            )
            if path == "/cookie/redirect":
                location = (("Location", query.get("to", "/echo")),)
                return _response(302, b"", cookie + location), delay
            return _response(200, b"cookie set", cookie), delay
        if path == "/echo":
            body = json.dumps({"method": method, "headers": headers}).encode()
            return _response(200, body, (("Content-Type", "application/json"),)), delay
        return _response(404, b"not found"), delay

    def _chaos(self, conn: _Connection, query: dict[str, str]) -> bytes | None:
        stats = self.stats
        roll = self.rng.random()
        edges = [float(query.get(k, 0.0)) for k in ("p503", "p429", "drop", "hang")]
        if roll < edges[0]:
            stats.faults["503"] += 1
            return _response(503, b"unavailable")
        roll -= edges[0]
        if roll < edges[1]:
            seconds = float(query.get("ra", 1.0))
            stats.faults["429"] += 1
            stats.throttled.append((time.monotonic(), conn.port, seconds))
            return _response(429, b"slow down", (("Retry-After", str(seconds)),))
        roll -= edges[1]
        if roll < edges[2]:
            stats.faults["drop"] += 1
            full = _response(200, _page(1024))
            conn.cut(full[: len(full) // 2])
            return None
        roll -= edges[2]
        if roll < edges[3]:
            stats.faults["hang"] += 1
            return None
        return _response(200, _page(1024))


class ScrapeServer:
    """The server in a background thread, listening on ``ports`` loopback ports.

    ``url(i, path)`` builds a URL on port number ``i`` (one platform each).
    """

    def __init__(self, ports: int = 3, *, delay: float = 0.0, record: bool = True) -> None:
        self._server = _Server(delay, record)
        self._nports = ports
        self.ports: list[int] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> ScrapeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test HTTP server did not start")

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._server.loop = loop
        self._stop = asyncio.Event()
        servers = []
        for _ in range(self._nports):
            port_box: list[int] = []

            def factory(box: list[int] = port_box) -> _Connection:
                return _Connection(self._server, box[0])

            srv = await loop.create_server(factory, "127.0.0.1", 0)
            port_box.append(srv.sockets[0].getsockname()[1])
            self.ports.append(port_box[0])
            servers.append(srv)
        self._ready.set()
        await self._stop.wait()
        for srv in servers:
            srv.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        loop = self._server.loop
        assert loop is not None
        assert self._stop is not None
        loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    # -- what tests read ------------------------------------------------------------------

    def url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{path}"

    def platform(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    def reset(self) -> None:
        """Forget what was seen so far (not the per-key counters of /throttle etc.)."""
        stats = self._server.stats
        stats.max.clear()
        stats.total_max = 0
        stats.arrivals.clear()
        stats.hits.clear()

    def max_concurrency(self, index: int) -> int:
        return self._server.stats.max.get(self.ports[index], 0)

    @property
    def total_max_concurrency(self) -> int:
        return self._server.stats.total_max

    def arrivals(self, index: int | None = None, prefix: str = "") -> list[tuple[float, str]]:
        port = None if index is None else self.ports[index]
        return [
            (t, target)
            for t, p, target in list(self._server.stats.arrivals)
            if (port is None or p == port) and target.startswith(prefix)
        ]

    def throttled(self) -> list[tuple[float, int, float]]:
        """``(time, port index, Retry-After)`` of every 429 the chaos route sent."""
        index = {port: i for i, port in enumerate(self.ports)}
        return [(t, index[p], ra) for t, p, ra in list(self._server.stats.throttled)]

    @property
    def faults(self) -> dict[str, int]:
        """How many of each chaos fault were served."""
        return dict(self._server.stats.faults)

    def all_hits(self) -> dict[str, int]:
        """Requests per target."""
        return dict(self._server.stats.hits)

    def hits(self, target: str) -> int:
        return self._server.stats.hits.get(target, 0)

    @property
    def total_hits(self) -> int:
        return len(self._server.stats.arrivals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args()

    async def serve() -> None:
        server = _Server(args.delay, record=False)
        loop = asyncio.get_running_loop()
        server.loop = loop
        srv = await loop.create_server(
            lambda: _Connection(server, args.port), "127.0.0.1", args.port, backlog=1024
        )
        print("ready", flush=True)
        async with srv:
            await srv.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
