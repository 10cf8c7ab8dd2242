"""The native engine against a hostile raw-socket server on 127.0.0.1.

Every case is one thing a broken or malicious server (or a careless caller) does on the
wire. Each test asserts what the engine returned or raised and what bytes the server
received: nothing at all when the request itself was unsafe, one request per connection
when the framing was in doubt (a connection is never reused after it). The module runs
past 600 lines because every case shares one server and its helpers.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import brotli
import pytest

from leadperf import ConfigError
from leadperf._scrape._engine import Response
from leadperf._scrape._native import NativeEngine
from leadperf._scrape._request import Limits, Request
from leadperf.errors import (
    InvalidResponseError,
    InvalidURLError,
    ResponseTooLargeError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
    TooManyRedirectsError,
    UnsafeRequestError,
)

AREA = "native engine"
Writer = asyncio.StreamWriter
Route = Callable[[Writer], Awaitable[bool]]  # writes an answer; True: keep the connection


def ok(body: bytes = b"fine", extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def raw(data: bytes, keep: bool = False) -> Route:
    """A route writing ``data`` as given, then closing unless ``keep``."""

    async def answer(w: Writer) -> bool:
        w.write(data)
        await w.drain()
        return keep

    return answer


def reset(data: bytes) -> Route:
    """A route writing ``data``, then resetting the connection (RST, not FIN)."""

    async def answer(w: Writer) -> bool:
        w.write(data)
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()
        return False

    return answer


class Hostile:
    """Serves ``routes[path]`` and records every connection and every byte it read."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.connections = 0
        self.received: list[bytes] = []  # every request head (and body), as read
        self.targets: list[tuple[int, str]] = []  # (connection number, request target)
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.received.append(head + body)
                target = head.split(b" ", 2)[1].decode("latin-1")
                self.targets.append((number, target))
                route = self.routes.get(target.partition("?")[0])
                if route is None:
                    writer.write(ok(b"missing"))
                    keep = True
                else:
                    keep = await route(writer)
                if not keep:
                    return
        except OSError:
            return
        finally:
            writer.close()

    def connection_of(self, index: int) -> int:
        return self.targets[index][0]


@pytest.fixture
async def server() -> AsyncIterator[Hostile]:
    hostile = Hostile()
    await hostile.start()
    yield hostile
    await hostile.stop()


@pytest.fixture
async def engine() -> AsyncIterator[NativeEngine]:
    eng = NativeEngine(max_connections=4, timeout=5.0, headers=None)
    yield eng
    await eng.aclose()


async def get(engine: NativeEngine, url: str, **kwargs: Any) -> Response:
    kwargs.setdefault("timeout", 5.0)
    timeout = kwargs.pop("timeout")
    return await engine.request(Request(kwargs.pop("method", "GET"), url, timeout, **kwargs))


# -- what the engine sends ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "url_path", "headers"),
    [
        ("GET /x HTTP/1.1\r\nX-Injected: 1\r\nX-Pad:", "/", ()),
        ("GET\x00", "/", ()),
        ("GÉT", "/", ()),
        ("GET", "/a\x00b", ()),
        ("GET", "/a\x0bb", ()),
        ("GET", "/a\x7fb", ()),
        ("GET", "/a\r\nX-Injected: 1", ()),
        ("GET", "/", (("X-A", "a\r\nX-Injected: 1"),)),
        ("GET", "/", (("X-A", "a\x00b"),)),
        ("GET", "/", (("X-A", "a\x0bb"),)),
        ("GET", "/", (("X-A", "a\x7fb"),)),
        ("GET", "/", (("X A", "1"),)),
        ("GET", "/", (("X-A:", "1"),)),
        ("GET", "/", (("X-A\r\nX-Injected", "1"),)),
        ("POST", "/", (("Content-Length", "5"), ("X-A", "1"))),
        ("POST", "/", (("Transfer-Encoding", "chunked"),)),
    ],
)
async def test_unsafe_requests_send_nothing(
    server: Hostile,
    engine: NativeEngine,
    reliability: Any,
    method: str,
    url_path: str,
    headers: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(UnsafeRequestError) as caught:
        await get(engine, server.url(url_path), method=method, headers=headers)
    assert isinstance(caught.value, ValueError)
    assert caught.value.url == server.url(url_path)
    assert server.connections == 0
    assert server.received == []
    # The engine is unharmed: the next request goes out as usual.
    assert (await get(engine, server.url("/after"))).content == b"missing"
    assert server.received[0].startswith(b"GET /after HTTP/1.1\r\n")
    assert b"injected" not in b"".join(server.received).lower()
    reliability.record(
        AREA,
        f"control bytes or a non-token in method={method!r}, path={url_path!r}, "
        f"headers={headers!r}",
        "UnsafeRequestError, nothing sent",
        f"{type(caught.value).__name__}; server saw {server.connections} connection(s) "
        "before the next clean request",
    )


@pytest.mark.anyio
async def test_the_engine_alone_frames_the_request_body(
    server: Hostile, engine: NativeEngine
) -> None:
    headers = (("Content-Length", "4"), ("X-A", "1"))
    await get(engine, server.url("/"), method="POST", content=b"lead", headers=headers)
    sent = server.received[0]
    assert sent.lower().count(b"content-length:") == 1
    assert sent.endswith(b"\r\n\r\nlead")


@pytest.mark.anyio
async def test_a_proxy_is_refused_not_bypassed(server: Hostile, engine: NativeEngine) -> None:
    with pytest.raises(ConfigError, match="engine='aiohttp'") as caught:
        await get(engine, server.url("/"), proxy="http://user:secret@127.0.0.1:9/")
    assert "secret" not in str(caught.value)
    assert server.connections == 0


@pytest.mark.anyio
async def test_international_host_names_use_idna_2008(
    server: Hostile, engine: NativeEngine, monkeypatch: pytest.MonkeyPatch, reliability: Any
) -> None:
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []
    real = loop.getaddrinfo

    async def to_loopback(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)  # every name is served by the local server
        return await real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", to_loopback)
    response = await get(engine, f"http://straße.test:{server.port}/x")
    assert response.status_code == 200
    assert looked_up == ["xn--strae-oqa.test"]
    assert f"Host: xn--strae-oqa.test:{server.port}\r\n".encode() in server.received[0]
    with pytest.raises(InvalidURLError):
        await get(engine, f"http://exa mple.test:{server.port}/")
    assert len(server.received) == 1
    reliability.record(
        AREA,
        "host straße.test",
        "IDNA 2008 (xn--strae-oqa.test), as browsers, aiohttp and httpx",
        f"looked up {looked_up[0]}; Host header sent for xn--strae-oqa.test",
    )


@pytest.mark.anyio
async def test_a_utf8_location_is_followed_as_utf8(
    server: Hostile, engine: NativeEngine, reliability: Any
) -> None:
    server.routes["/old"] = raw(
        b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9?q=\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
        keep=True,
    )
    response = await get(engine, server.url("/old"))
    assert [t for _, t in server.targets] == ["/old", "/caf%C3%A9?q=%C3%A9"]
    assert response.url == server.url("/café?q=é")
    reliability.record(
        AREA,
        "Location: /café as raw UTF-8",
        "requested as /caf%C3%A9",
        f"requested {server.targets[1][1]}",
    )


# -- framing the engine refuses -----------------------------------------------------------

FRAMING = {
    "two Content-Length values": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "Content-Length and Transfer-Encoding": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "Transfer-Encoding: xchunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "Transfer-Encoding: gzip, chunked": b"HTTP/1.1 200 OK\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "Content-Length: +5": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "Content-Length: 1_0": b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\nhellohello",
    "Content-Length: 0x5": b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
    "chunk size +5": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"+5\r\nhello\r\n0\r\n\r\n",
    "chunk size 1_0": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1_0\r\nhellohello\r\n0\r\n\r\n",
    "chunk size 0x5": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x5\r\nhello\r\n0\r\n\r\n",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
    "bare CR in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nhi",
    "status -1": b"HTTP/1.1 -1 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status 2_0": b"HTTP/1.1 2_0 OK\r\nContent-Length: 2\r\n\r\nhi",
    "status 2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi",
    "space before the colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "HTTP/2.0 in an HTTP/1 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "not HTTP at all": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "unsolicited 101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(FRAMING))
async def test_malformed_framing_is_refused_and_the_connection_dropped(
    server: Hostile, engine: NativeEngine, reliability: Any, case: str
) -> None:
    server.routes["/bad"] = raw(FRAMING[case], keep=True)  # the server would keep it open
    with pytest.raises(InvalidResponseError) as caught:
        await get(engine, server.url("/bad"))
    assert isinstance(caught.value, ScrapeConnectionError)
    assert caught.value.url == server.url("/bad")
    assert (await get(engine, server.url("/next"))).content == b"missing"
    assert [t for _, t in server.targets] == ["/bad", "/next"]
    assert server.connection_of(0) != server.connection_of(1)  # never reused
    assert server.connections == 2
    reliability.record(
        AREA,
        f"response framing: {case}",
        "InvalidResponseError, connection never reused",
        f"{type(caught.value).__name__}: {str(caught.value)[-70:]}; next request on a new "
        f"connection ({server.connections} connections)",
    )


@pytest.mark.anyio
async def test_bytes_after_the_response_are_never_read_as_the_next_one(
    server: Hostile, engine: NativeEngine, reliability: Any
) -> None:
    smuggled = ok(b"smuggled")
    server.routes["/extra"] = raw(ok(b"first") + smuggled, keep=True)

    async def late(w: Writer) -> bool:
        w.write(ok(b"second"))
        await w.drain()
        await asyncio.sleep(0.05)  # the client holds the connection idle by now
        w.write(smuggled)
        await w.drain()
        return True

    server.routes["/late"] = late
    assert (await get(engine, server.url("/extra"))).content == b"first"
    assert (await get(engine, server.url("/next"))).content == b"missing"
    assert (await get(engine, server.url("/late"))).content == b"second"
    deadline = time.monotonic() + 5
    while engine._pool.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the late bytes close the idle connection
    assert not engine._pool.idle
    assert (await get(engine, server.url("/next"))).content == b"missing"
    numbers = [n for n, _ in server.targets]
    assert numbers == [1, 2, 2, 3]  # /extra alone on 1; /late's connection not reused
    reliability.record(
        AREA,
        "a second response in the same read, and one sent while the connection idles",
        "never read as the next response; the connection is dropped",
        f"requests per connection {numbers}; no response read 'smuggled'",
    )


@pytest.mark.anyio
async def test_a_head_response_is_reused_only_when_nothing_follows_its_head(
    server: Hostile, engine: NativeEngine
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    server.routes["/clean"] = raw(head, keep=True)
    server.routes["/with-body"] = raw(head + b"a body a HEAD answer must not have", keep=True)
    server.routes["/interim"] = raw(b"HTTP/1.1 100 Continue\r\n\r\n" + head, keep=True)
    for path in ("/clean", "/interim", "/with-body"):
        response = await get(engine, server.url(path), method="HEAD")
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-length"] == "5000"
    assert (await get(engine, server.url("/next"))).content == b"missing"
    numbers = [n for n, _ in server.targets]
    assert numbers == [1, 1, 1, 2]  # the bytes after the third head: not reused


@pytest.mark.anyio
async def test_a_reset_inside_a_read_to_close_body_is_an_error(
    server: Hostile, engine: NativeEngine, reliability: Any
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    server.routes["/reset"] = reset(head + b"partial body")
    server.routes["/closed"] = raw(head + b"whole body")  # a clean close ends the body
    server.routes["/short"] = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    with pytest.raises(InvalidResponseError, match="reset") as caught:
        await get(engine, server.url("/reset"))
    complete = await get(engine, server.url("/closed"))
    assert complete.status_code == 200
    assert complete.content == b"whole body"
    with pytest.raises(InvalidResponseError, match="before the response ended"):
        await get(engine, server.url("/short"))
    assert [t for _, t in server.targets] == ["/reset", "/closed", "/short"]
    reliability.record(
        AREA,
        "connection reset inside a body that runs until the close",
        "an error, never 200 with a partial body",
        f"{type(caught.value).__name__}; a clean close returned the whole body",
    )


# -- limits -------------------------------------------------------------------------------


async def _limited(limits: Limits) -> NativeEngine:
    return NativeEngine(max_connections=2, timeout=5.0, headers=None, limits=limits)


@pytest.mark.anyio
@pytest.mark.parametrize("pieces", [1, 40])
async def test_the_head_cap_holds_however_the_bytes_arrive(
    server: Hostile, engine: NativeEngine, reliability: Any, pieces: int
) -> None:
    line = b"X-Big: " + b"a" * 100_000 + b"\r\n"
    data = b"HTTP/1.1 200 OK\r\n" + line + b"Content-Length: 2\r\n\r\nhi"

    async def answer(w: Writer) -> bool:
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            w.write(data[i : i + step])
            await w.drain()
            if pieces > 1:
                await asyncio.sleep(0.002)
        return True

    server.routes["/big-head"] = answer
    with pytest.raises(ResponseTooLargeError, match="max_head_size") as caught:
        await get(engine, server.url("/big-head"))
    assert (await get(engine, server.url("/next"))).content == b"missing"
    assert server.connections == 2
    reliability.record(
        AREA,
        f"one 100 KB header line in {pieces} write(s)",
        "ResponseTooLargeError at the 64 KiB head cap",
        f"{type(caught.value).__name__}",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["trailer", "chunk extension"])
async def test_bytes_that_add_no_body_are_capped_too(
    server: Hostile, engine: NativeEngine, reliability: Any, where: str
) -> None:
    filler = b"a" * 4096

    async def answer(w: Writer) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if where == "trailer":
            w.write(b"5\r\nhello\r\n0\r\nX-T: ")
        else:
            w.write(b"5;ext=")
        for _ in range(40):  # 160 KB in separate reads, none of them body
            w.write(filler)
            await w.drain()
            await asyncio.sleep(0.002)
        w.write(b"\r\n\r\n" if where == "trailer" else b"\r\nhello\r\n0\r\n\r\n")
        return True

    server.routes["/framing"] = answer
    with pytest.raises(ResponseTooLargeError, match="max_head_size") as caught:
        await get(engine, server.url("/framing"))
    assert (await get(engine, server.url("/next"))).content == b"missing"
    assert server.connections == 2
    reliability.record(
        AREA,
        f"a 160 KB {where} over 40 reads",
        "ResponseTooLargeError at the head cap (llhttp never buffers more than the cap)",
        f"{type(caught.value).__name__}: {str(caught.value).split(': ', 1)[1][:60]}",
    )


@pytest.mark.anyio
async def test_header_count_is_capped(server: Hostile, reliability: Any) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    server.routes["/many"] = raw(ok(b"hi", fields), keep=True)
    server.routes["/enough"] = raw(ok(b"hi", fields[: fields.index(b"X-H9:")]), keep=True)
    eng = await _limited(Limits(max_header_count=10))
    try:
        assert (await get(eng, server.url("/enough"))).content == b"hi"  # 9 + Content-Length
        with pytest.raises(ResponseTooLargeError, match="max_header_count"):
            await get(eng, server.url("/many"))
    finally:
        await eng.aclose()
    reliability.record(
        AREA,
        "12 header fields with max_header_count=10",
        "ResponseTooLargeError",
        "10 fields accepted, 12 refused",
    )


@pytest.mark.anyio
async def test_body_size_is_capped_before_and_while_reading(
    server: Hostile, reliability: Any
) -> None:
    server.routes["/declared"] = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n")

    async def chunked(w: Writer) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):
            w.write(b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    server.routes["/chunked"] = chunked
    server.routes["/fits"] = raw(ok(b"y" * 1_000_000), keep=True)
    # Answers without a body may name any length: HEAD, 304 (the resource's), 204.
    server.routes["/no-body"] = raw(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000000000\r\n\r\n", keep=True
    )
    server.routes["/huge"] = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n", keep=True
    )
    eng = await _limited(Limits(max_body_size=1_000_000))
    try:
        assert len((await get(eng, server.url("/fits"))).content) == 1_000_000
        assert (await get(eng, server.url("/no-body"))).status_code == 304
        head = await get(eng, server.url("/huge"), method="HEAD")
        assert head.headers["content-length"] == "5000000000"
        with pytest.raises(ResponseTooLargeError, match="max_body_size"):
            await get(eng, server.url("/declared"))
        with pytest.raises(ResponseTooLargeError, match="max_body_size"):
            await get(eng, server.url("/chunked"))
    finally:
        await eng.aclose()
    reliability.record(
        AREA,
        "bodies over max_body_size=1 MB (declared, and chunked without a length)",
        "ResponseTooLargeError",
        "a 1,000,000-byte body accepted; 2 MB declared and 1 MiB chunked refused",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_decoded_size_is_capped_while_decoding(
    server: Hostile, reliability: Any, coding: str
) -> None:
    plain = b"\0" * 8_000_000
    packed = {
        "gzip": gzip.compress(plain),
        "deflate": zlib.compress(plain),
        "br": brotli.compress(plain),
    }[coding]
    server.routes["/bomb"] = raw(ok(packed, b"Content-Encoding: %s\r\n" % coding.encode()))
    eng = await _limited(Limits(max_body_size=1_000_000))
    try:
        with pytest.raises(ResponseTooLargeError, match="decoded body"):
            await get(eng, server.url("/bomb"))
    finally:
        await eng.aclose()
    reliability.record(
        AREA,
        f"{len(packed)} bytes of {coding} inflating to 8 MB, max_body_size=1 MB",
        "ResponseTooLargeError while decoding",
        "refused",
    )


@pytest.fixture(scope="module")
def brotli_bomb() -> bytes:
    """1 GiB of zeros as brotli: about 1.6 KB (takes a couple of seconds to build)."""
    compressor = brotli.Compressor(quality=5)
    zeros = b"\0" * (1 << 20)
    parts = [compressor.process(zeros) for _ in range(1024)]
    parts.append(compressor.finish())
    return b"".join(parts)


@pytest.mark.anyio
async def test_a_brotli_bomb_stops_at_the_cap_inside_the_deadline(
    server: Hostile, engine: NativeEngine, reliability: Any, brotli_bomb: bytes
) -> None:
    assert len(brotli_bomb) < 2000
    server.routes["/bomb"] = raw(ok(brotli_bomb, b"Content-Encoding: br\r\n"))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    try:
        with pytest.raises(ResponseTooLargeError, match="max_body_size"):
            await get(engine, server.url("/bomb"), timeout=3.0)
    finally:
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.03)  # the ticker measures the gap the decoding left
        ticking.cancel()
    assert elapsed < 3.0  # refused by the cap, well inside the request's deadline
    # Decoding is spread over callbacks: no single stall takes most of the request (one
    # synchronous decode up to the cap would: 0.1-0.3 s with nothing else running).
    assert max(gaps) < max(0.1, 0.6 * elapsed)
    assert (await get(engine, server.url("/next"))).content == b"missing"
    reliability.record(
        AREA,
        f"brotli bomb: {len(brotli_bomb)} bytes inflating to 1 GiB, timeout=3",
        "stops at the 32 MiB decoded cap, inside the deadline, loop not frozen",
        f"ResponseTooLargeError after {elapsed:.2f} s; longest event-loop stall "
        f"{max(gaps) * 1000:.0f} ms",
    )


@pytest.mark.anyio
async def test_the_deadline_covers_decoding(
    server: Hostile, reliability: Any, brotli_bomb: bytes
) -> None:
    # With the decoded-size cap far away, only the request's deadline can stop the bomb:
    # decoding in steps lets the deadline's timer run between them.
    server.routes["/bomb"] = raw(ok(brotli_bomb, b"Content-Encoding: br\r\n"))
    eng = await _limited(Limits(max_body_size=1 << 31))
    started = time.perf_counter()
    try:
        with pytest.raises(ScrapeTimeoutError):
            await get(eng, server.url("/bomb"), timeout=0.05)
    finally:
        elapsed = time.perf_counter() - started
        await eng.aclose()
    assert elapsed < 1.0
    reliability.record(
        AREA,
        "1 GiB brotli bomb with max_body_size=2 GiB and timeout=0.05",
        "the one deadline stops decoding",
        f"ScrapeTimeoutError after {elapsed:.2f} s",
    )


@pytest.mark.anyio
async def test_every_gzip_member_is_decoded(server: Hostile, engine: NativeEngine) -> None:
    body = gzip.compress(b"first member, ") + gzip.compress(b"second member")
    server.routes["/members"] = raw(ok(body, b"Content-Encoding: gzip\r\n"), keep=True)
    truncated = gzip.compress(b"x" * 1000)[:-12]
    server.routes["/cut"] = raw(ok(truncated, b"Content-Encoding: gzip\r\n"), keep=True)
    assert (await get(engine, server.url("/members"))).content == b"first member, second member"
    # An empty body is empty whatever its declared coding (204s, empty 200s).
    server.routes["/empty"] = raw(ok(b"", b"Content-Encoding: gzip\r\n"), keep=True)
    assert (await get(engine, server.url("/empty"))).content == b""
    with pytest.raises(InvalidResponseError, match="compressed"):
        await get(engine, server.url("/cut"))


@pytest.mark.anyio
async def test_a_megabyte_of_one_byte_chunks_parses_in_linear_time(
    server: Hostile, engine: NativeEngine, reliability: Any
) -> None:
    size = 1 << 20
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"1\r\nx\r\n" * size + b"0\r\n\r\n"
    server.routes["/tiny-chunks"] = raw(data, keep=True)
    started = time.perf_counter()
    response = await get(engine, server.url("/tiny-chunks"), timeout=30.0)
    elapsed = time.perf_counter() - started
    assert response.content == b"x" * size
    assert elapsed < 10.0  # linear: about 1 s on a shared 2-core machine (5.7 s before)
    reliability.record(
        AREA,
        "1 MiB body in 1-byte chunks (6 MiB of framing) written at once",
        "parsed in linear time",
        f"{elapsed:.2f} s",
    )


# -- time and redirects -------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_deadline_bounds_a_dripping_body(
    server: Hostile, engine: NativeEngine, reliability: Any
) -> None:
    async def drip(w: Writer) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)
        return False

    server.routes["/drip"] = drip
    started = time.perf_counter()
    with pytest.raises(ScrapeTimeoutError):
        await get(engine, server.url("/drip"), timeout=0.5)
    elapsed = time.perf_counter() - started
    assert 0.45 < elapsed < 1.5
    reliability.record(
        AREA,
        "a body dripping one byte every 50 ms, timeout=0.5",
        "ScrapeTimeoutError at the one deadline (never per read)",
        f"raised after {elapsed:.2f} s",
    )


@pytest.mark.anyio
async def test_redirect_loops_and_long_chains_are_typed_and_bounded(
    server: Hostile, reliability: Any
) -> None:
    server.routes["/loop"] = raw(
        b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n", keep=True
    )
    for i in range(6):
        server.routes[f"/hop{i}"] = raw(
            b"HTTP/1.1 301 Moved\r\nLocation: /hop%d\r\nContent-Length: 0\r\n\r\n" % (i + 1),
            keep=True,
        )
    eng = await _limited(Limits(max_redirects=3))
    try:
        with pytest.raises(TooManyRedirectsError, match="more than 3 redirects") as caught:
            await get(eng, server.url("/loop"))
        assert not isinstance(caught.value, ScrapeConnectionError)  # not a retryable kind
        loops = sum(t == "/loop" for _, t in server.targets)
        with pytest.raises(TooManyRedirectsError):
            await get(eng, server.url("/hop0"))
        hops = [t for _, t in server.targets if t.startswith("/hop")]
    finally:
        await eng.aclose()
    assert loops == 4  # the first request and 3 redirects
    assert hops == ["/hop0", "/hop1", "/hop2", "/hop3"]
    assert server.connections == 1  # every hop on one kept-alive connection
    reliability.record(
        AREA,
        "a redirect loop, and a 6-hop chain, with max_redirects=3",
        "TooManyRedirectsError (not a connection error, so never retried)",
        f"loop: {loops} requests; chain: {len(hops)} requests",
    )
