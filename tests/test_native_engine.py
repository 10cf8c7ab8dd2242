"""The native HTTP/1.1 engine against a real raw-socket server on 127.0.0.1.

The server here writes exact bytes (chunked framing, compressed bodies, HTTP/1.0, interim
responses, early closes), so each test checks the engine's handling of one wire-level
case, and what the server saw (connections, request lines, headers, bodies). The module
runs past 600 lines because every case shares the one server and its routes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import brotli
import pytest

from leadperf import AsyncScraper
from leadperf._scrape._engine import Response
from leadperf._scrape._native import NativeEngine
from leadperf._scrape._request import Request, encode_body
from leadperf.errors import (
    InvalidResponseError,
    InvalidURLError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
    TooManyRedirectsError,
    UnsafeRequestError,
)

BODY = b"<html>" + b"lead " * 2000 + b"</html>"


class RawServer:
    """One asyncio server; ``routes`` map a path to a coroutine writing the raw answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.port = 0
        self.served_on: dict[int, int] = {}  # connection number -> requests it carried
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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = {
                    "method": method,
                    "target": target,
                    "headers": headers,
                    "body": body,
                    "connection": number,
                    "host_lines": sum(x.lower().startswith("host:") for x in lines[1:]),
                }
                self.requests.append(request)
                self.served_on[number] = self.served_on.get(number, 0) + 1
                keep = await self._answer(request, writer)
                await writer.drain()
                if not keep:
                    return
        finally:
            self.open -= 1
            writer.close()

    async def _answer(self, request: dict[str, Any], w: asyncio.StreamWriter) -> bool:
        path, _, query = request["target"].partition("?")
        if path == "/page":
            w.write(_response(200, BODY))
        elif path == "/echo":
            echo = {k: request[k] for k in ("method", "target", "headers")}
            echo["body"] = request["body"].decode()
            w.write(_response(200, json.dumps(echo).encode(), ctype="application/json"))
        elif path == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"lead", b" ", b"x" * 5000):
                w.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
                await w.drain()
            w.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif path == "/bigchunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(256):
                piece = bytes([65 + i % 26]) * 4096
                w.write(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
                if i % 16 == 0:
                    await w.drain()
            w.write(b"0\r\n\r\n")
        elif path == "/big":
            data = bytes(range(256)) * 8192  # 2 MiB
            w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode())
            for i in range(0, len(data), 65536):
                w.write(data[i : i + 65536])
                await w.drain()
        elif path in ("/gzip", "/deflate", "/rawdeflate", "/br"):
            raw = {
                "/gzip": gzip.compress(BODY),
                "/deflate": zlib.compress(BODY),
                "/rawdeflate": zlib.compress(BODY, wbits=-15),
                "/br": brotli.compress(BODY),
            }[path]
            coding = {"/rawdeflate": "deflate"}.get(path, path[1:])
            w.write(_response(200, raw, extra=f"Content-Encoding: {coding}\r\n"))
        elif path == "/badgzip":
            w.write(_response(200, b"not gzip at all", extra="Content-Encoding: gzip\r\n"))
        elif path == "/close":
            w.write(_response(200, b"closing", extra="Connection: close\r\n"))
            return False
        elif path == "/http10":
            w.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
            return False
        elif path == "/continue":
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await w.drain()
            w.write(_response(200, b"after interim"))
        elif path == "/nocontent":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/headlen":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
        elif path.startswith("/redirect/"):
            code, to = path.split("/")[2], query.replace("to=", "", 1)
            w.write(_response(int(code), b"", extra=f"Location: {to}\r\n"))
        elif path == "/loop":
            w.write(_response(302, b"", extra="Location: /loop\r\n"))
        elif path == "/garbage":
            w.write(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        elif path == "/wait":
            await asyncio.sleep(float(query.partition("=")[2] or 0.05))
            w.write(_response(200, b"waited"))
        elif path == "/hang":
            await asyncio.sleep(30)
            return False
        elif path == "/answer-then-forget":
            # Answer, then close this connection as a server whose idle timeout ran out.
            w.write(_response(200, b"first"))
            await w.drain()
            return False
        elif path == "/drop":
            return False  # close without a byte: a stale keep-alive connection
        else:
            w.write(_response(404, b"missing"))
        return True


def _response(status: int, body: bytes, *, ctype: str = "text/html", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


async def send(
    engine: NativeEngine,
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    content: bytes | str | None = None,
    data: dict[str, Any] | None = None,
    json: Any = None,
    timeout: float = 5.0,
    follow_redirects: bool = True,
) -> Response:
    """One request through the engine, its body encoded as the scraper encodes it."""
    body, content_type = encode_body(content, data, json)
    pairs = list((headers or {}).items())
    if content_type is not None:
        pairs.append(("Content-Type", content_type))
    request = Request(
        method,
        url,
        timeout,
        params=params,
        headers=tuple(pairs),
        content=body,
        follow_redirects=follow_redirects,
    )
    return await engine.request(request)


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for the server side to notice closed connections (it runs on this loop)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engine() -> AsyncIterator[NativeEngine]:
    eng = NativeEngine(max_connections=10, timeout=5.0, headers=None)
    yield eng
    await eng.aclose()


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection(raw: RawServer, engine: NativeEngine) -> None:
    for _ in range(20):
        response = await send(engine, "GET", raw.url("/page"))
        assert response.status_code == 200
        assert response.content == BODY
    assert raw.connections == 1
    assert raw.served_on == {1: 20}
    assert response.headers["content-type"] == "text/html"
    assert response.text.startswith("<html>lead")


@pytest.mark.anyio
async def test_request_line_and_default_headers(raw: RawServer, engine: NativeEngine) -> None:
    response = await send(engine, "GET", raw.url("/echo?a=1"), params={"b": ["2", "3"]})
    seen = response.json()
    assert seen["method"] == "GET"
    assert seen["target"] == "/echo?a=1&b=2&b=3"
    assert seen["headers"]["host"] == f"127.0.0.1:{raw.port}"
    assert seen["headers"]["accept-encoding"] == "gzip, deflate, br"
    assert seen["headers"]["user-agent"].startswith("leadperf/")
    assert "content-length" not in seen["headers"]


@pytest.mark.anyio
async def test_bodies_and_header_override(raw: RawServer) -> None:
    eng = NativeEngine(max_connections=2, timeout=5.0, headers={"User-Agent": "lead-bot/1"})
    try:
        form = (await send(eng, "POST", raw.url("/echo"), data={"q": "a b"})).json()
        assert form["body"] == "q=a+b"
        assert form["headers"]["content-type"] == "application/x-www-form-urlencoded"
        assert form["headers"]["user-agent"] == "lead-bot/1"
        sent = (await send(eng, "PUT", raw.url("/echo"), json={"id": 7})).json()
        assert sent["method"] == "PUT"
        assert json.loads(sent["body"]) == {"id": 7}
        assert sent["headers"]["content-type"] == "application/json"
        text = (
            await send(eng, "POST", raw.url("/echo"), content="héllo", headers={"X-A": "1"})
        ).json()
        assert text["body"] == "héllo"
        assert text["headers"]["x-a"] == "1"
        assert text["headers"]["content-length"] == str(len("héllo".encode()))
        assert text["headers"]["user-agent"] == "lead-bot/1"
        empty = (await send(eng, "POST", raw.url("/echo"))).json()
        assert empty["headers"]["content-length"] == "0"
    finally:
        await eng.aclose()


@pytest.mark.anyio
async def test_a_host_header_replaces_the_urls(raw: RawServer, engine: NativeEngine) -> None:
    response = await send(engine, "GET", raw.url("/echo"), headers={"host": "leads.example"})
    assert response.json()["headers"]["host"] == "leads.example"
    assert raw.requests[-1]["host_lines"] == 1
    raw_eng = NativeEngine(max_connections=1, timeout=5.0, headers={"HOST": "other.example"})
    try:
        seen = (await send(raw_eng, "GET", raw.url("/echo"))).json()
    finally:
        await raw_eng.aclose()
    assert seen["headers"]["host"] == "other.example"
    assert raw.requests[-1]["host_lines"] == 1


@pytest.mark.anyio
async def test_userinfo_becomes_basic_auth(raw: RawServer, engine: NativeEngine) -> None:
    url = raw.url("/echo").replace("http://", "http://ada:s%40cret@")
    seen = (await send(engine, "GET", url)).json()
    assert seen["headers"]["authorization"] == "Basic YWRhOnNAY3JldA=="  # ada:s@cret


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/rawdeflate", "/br"])
async def test_compressed_bodies_are_decoded(
    raw: RawServer, engine: NativeEngine, path: str
) -> None:
    response = await send(engine, "GET", raw.url(path))
    assert response.content == BODY


@pytest.mark.anyio
async def test_chunked_bodies(raw: RawServer, engine: NativeEngine) -> None:
    small = await send(engine, "GET", raw.url("/chunked"))
    assert small.content == b"lead " + b"x" * 5000
    big = await send(engine, "GET", raw.url("/bigchunked"))
    assert len(big.content) == 256 * 4096
    assert big.content[:4096] == b"A" * 4096
    assert big.content[-4096:] == bytes([65 + 255 % 26]) * 4096
    # Framing was consumed exactly: the same connection serves the next request.
    assert (await send(engine, "GET", raw.url("/page"))).content == BODY
    assert raw.connections == 1


@pytest.mark.anyio
async def test_large_body_over_many_reads(raw: RawServer, engine: NativeEngine) -> None:
    response = await send(engine, "GET", raw.url("/big"))
    assert response.content == bytes(range(256)) * 8192


@pytest.mark.anyio
async def test_connection_close_and_http10(raw: RawServer, engine: NativeEngine) -> None:
    assert (await send(engine, "GET", raw.url("/close"))).content == b"closing"
    old = await send(engine, "GET", raw.url("/http10"))  # body runs until the close
    assert old.content == BODY
    assert old.headers["content-type"] == "text/plain"
    assert (await send(engine, "GET", raw.url("/page"))).status_code == 200
    assert raw.connections == 3  # neither closed connection was reused


@pytest.mark.anyio
async def test_interim_no_content_and_head(raw: RawServer, engine: NativeEngine) -> None:
    assert (await send(engine, "GET", raw.url("/continue"))).content == b"after interim"
    nothing = await send(engine, "GET", raw.url("/nocontent"))
    assert nothing.status_code == 204
    assert nothing.content == b""
    head = await send(engine, "HEAD", raw.url("/headlen"))
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "12345"
    assert (await send(engine, "GET", raw.url("/page"))).content == BODY
    assert raw.connections == 1


@pytest.mark.anyio
async def test_redirects(raw: RawServer, engine: NativeEngine) -> None:
    see_other = await send(engine, "POST", raw.url("/redirect/303?to=/echo"), content=b"x")
    assert see_other.url == raw.url("/echo")
    assert see_other.json()["method"] == "GET"
    assert see_other.json()["body"] == ""
    keep = await send(engine, "POST", raw.url("/redirect/307?to=/echo"), content=b"abc")
    assert keep.json()["method"] == "POST"
    assert keep.json()["body"] == "abc"
    stay = await send(engine, "GET", raw.url("/redirect/302?to=/echo"), follow_redirects=False)
    assert stay.status_code == 302
    assert stay.headers["location"] == "/echo"
    with pytest.raises(TooManyRedirectsError, match="more than 20 redirects"):
        await send(engine, "GET", raw.url("/loop"))
    assert sum(r["target"] == "/loop" for r in raw.requests) == 21


@pytest.mark.anyio
async def test_cross_origin_redirect_drops_credentials(
    raw: RawServer, engine: NativeEngine
) -> None:
    other = RawServer()
    await other.start()
    try:
        to = other.url("/echo")
        response = await send(
            engine, "GET", raw.url(f"/redirect/302?to={to}"), headers={"Authorization": "Bearer t"}
        )
        assert response.url == to
        assert "authorization" not in response.json()["headers"]
        assert raw.requests[-1]["headers"]["authorization"] == "Bearer t"
        # Engine-wide credentials stay on their origin too.
        eng = NativeEngine(max_connections=2, timeout=5.0, headers={"Authorization": "Bearer e"})
        try:
            moved = await send(eng, "GET", raw.url(f"/redirect/302?to={to}"))
        finally:
            await eng.aclose()
        assert moved.url == to
        assert "authorization" not in moved.json()["headers"]
    finally:
        await other.stop()


@pytest.mark.anyio
async def test_stale_keep_alive_connection_is_retried_once(
    raw: RawServer, engine: NativeEngine
) -> None:
    # The server answers, then closes the connection without saying so; the engine's next
    # request may already be on its way on that connection and must be resent on a new one.
    for _ in range(5):
        assert (await send(engine, "GET", raw.url("/answer-then-forget"))).content == b"first"
    assert raw.connections == 5
    # A reused connection that dies before any answer is retried once; a fresh one is not.
    await send(engine, "GET", raw.url("/page"))
    with pytest.raises(ScrapeConnectionError, match="closed the connection"):
        await send(engine, "GET", raw.url("/drop"))
    drops = [r for r in raw.requests if r["target"] == "/drop"]
    assert len(drops) == 2
    assert drops[0]["connection"] != drops[1]["connection"]


@pytest.mark.anyio
async def test_post_is_not_resent_on_a_dead_connection(
    raw: RawServer, engine: NativeEngine
) -> None:
    await send(engine, "GET", raw.url("/page"))
    with pytest.raises(ScrapeConnectionError):
        await send(engine, "POST", raw.url("/drop"), content=b"order")
    assert sum(r["target"] == "/drop" for r in raw.requests) == 1


@pytest.mark.anyio
async def test_max_connections_is_a_hard_cap(raw: RawServer) -> None:
    eng = NativeEngine(max_connections=3, timeout=5.0, headers=None)
    try:
        results = await asyncio.gather(
            *(send(eng, "GET", raw.url("/wait?s=0.05")) for _ in range(12))
        )
    finally:
        await eng.aclose()
    assert all(r.content == b"waited" for r in results)
    assert raw.max_open == 3
    assert raw.connections == 3


@pytest.mark.anyio
async def test_cap_is_shared_across_origins(raw: RawServer) -> None:
    other = RawServer()
    await other.start()
    eng = NativeEngine(max_connections=2, timeout=5.0, headers=None)
    try:
        await asyncio.gather(*(send(eng, "GET", raw.url("/wait?s=0.02")) for _ in range(4)))
        # Both connections idle on the first origin; the second origin evicts them.
        await asyncio.gather(*(send(eng, "GET", other.url("/wait?s=0.02")) for _ in range(4)))
        # Only origins that hold idle connections are remembered (no trail of past hosts).
        assert [port for _, _, port in eng._pool.idle] == [other.port]
        assert eng._pool.count == 2
    finally:
        await eng.aclose()
    assert raw.max_open <= 2
    assert other.max_open <= 2
    assert other.connections == 2
    await _until(lambda: raw.open == 0 and other.open == 0)
    await other.stop()


@pytest.mark.anyio
async def test_timeouts_and_failures_are_typed(raw: RawServer) -> None:
    eng = NativeEngine(max_connections=2, timeout=0.3, headers=None)
    try:
        with pytest.raises(ScrapeTimeoutError, match=r"within 0\.3 s"):
            await send(eng, "GET", raw.url("/hang"), timeout=0.3)
        with pytest.raises(ScrapeTimeoutError, match=r"within 0\.1 s"):
            await send(eng, "GET", raw.url("/hang"), timeout=0.1)
        with pytest.raises(InvalidResponseError, match="malformed response"):
            await send(eng, "GET", raw.url("/garbage"))
        with pytest.raises(InvalidResponseError, match="Content-Encoding"):
            await send(eng, "GET", raw.url("/badgzip"))
        with pytest.raises(InvalidURLError):
            await send(eng, "GET", "ftp://127.0.0.1/file")
        with pytest.raises(InvalidURLError):
            await send(eng, "GET", "http://127.0.0.1:99999/")
        with pytest.raises(UnsafeRequestError, match="control characters"):
            await send(eng, "GET", raw.url("/echo"), headers={"X-Evil": "a\r\nInjected: 1"})
        # After all that, the engine still works and the hung connections were dropped.
        assert (await send(eng, "GET", raw.url("/page"))).content == BODY
    finally:
        await eng.aclose()
    assert not any("injected" in r["headers"] for r in raw.requests)


@pytest.mark.anyio
async def test_refused_connection() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        eng = NativeEngine(max_connections=2, timeout=2.0, headers=None)
        try:
            with pytest.raises(ScrapeConnectionError, match="connection failed"):
                await send(eng, "GET", f"http://127.0.0.1:{port}/")
        finally:
            await eng.aclose()


@pytest.mark.anyio
async def test_aclose_closes_every_connection(raw: RawServer) -> None:
    eng = NativeEngine(max_connections=5, timeout=5.0, headers=None)
    await asyncio.gather(*(send(eng, "GET", raw.url("/wait?s=0.02")) for _ in range(5)))
    assert raw.open == 5
    await eng.aclose()
    await _until(lambda: raw.open == 0)


@pytest.mark.anyio
async def test_scraper_on_native_engine_end_to_end(raw: RawServer) -> None:
    urls = [raw.url(f"/page?i={i}") for i in range(50)] + [raw.url("/gzip"), "nope"]
    async with AsyncScraper(max_concurrent=4, engine="native") as scraper:
        results = await scraper.scrape_batch(urls)
        assert scraper.stats().engine == "native"
    assert [r.url for r in results] == urls
    assert all(r.ok and r.content == BODY for r in results[:-1])
    assert not results[-1].ok
    assert isinstance(results[-1].error, InvalidURLError)
    assert raw.max_open <= 4
    assert len(raw.requests) == 51


@pytest.mark.anyio
async def test_fast_url_path_matches_the_full_parse(engine: NativeEngine) -> None:
    from leadperf._scrape._native._wire import parse_url as _parse_url

    urls = [
        "http://127.0.0.1:8080/page/x?a=1#frag",
        "https://leads.example.com",
        "http://leads.example.com?x=1",
        "http://leads.example.com:80/a/b",
        "https://leads.example.com:8443/a%20b?q=%C3%A9",
        "http://Leads.Example.com/Case",
        "http://leads.example.com/with space",
        "http://user:pw@leads.example.com/private",
        "http://[::1]:8080/v6",
        "http://bücher.example/straße",
    ]
    for _ in range(2):  # the second round answers from the origin cache
        for url in urls:
            fast, full = engine._target(url, None), _parse_url(url, None)
            assert (fast.origin, fast.target, fast.host_header, fast.auth) == (
                full.origin,
                full.target,
                full.host_header,
                full.auth,
            ), url
    assert _parse_url(urls[0], None).target == "/page/x?a=1"
    assert _parse_url(urls[1], None).target == "/"
    assert _parse_url(urls[2], None).target == "/?x=1"
    assert _parse_url(urls[3], None).host_header == "leads.example.com"
    assert _parse_url(urls[6], None).target == "/with%20space"
    assert _parse_url(urls[8], None).host_header == "[::1]:8080"
    assert _parse_url(urls[9], None).origin == ("http", "xn--bcher-kva.example", 80)


@pytest.mark.anyio
async def test_https_verifies_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
    ]
    subprocess.run(
        [*command, "-addext", san, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = RawServer()
    server._server = await asyncio.start_server(server._client, "127.0.0.1", 0, ssl=context)
    server.port = server._server.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{server.port}/page"
    try:
        untrusting = NativeEngine(max_connections=2, timeout=5.0, headers=None)
        try:
            with pytest.raises(ScrapeConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await send(untrusting, "GET", url)
        finally:
            await untrusting.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts it now
        trusting = NativeEngine(max_connections=2, timeout=5.0, headers=None)
        try:
            for _ in range(3):
                assert (await send(trusting, "GET", url)).content == BODY
        finally:
            await trusting.aclose()
        assert server.served_on[server.connections] == 3  # one TLS connection, kept alive
        assert server.requests[-1]["headers"]["host"] == f"127.0.0.1:{server.port}"
    finally:
        await server.stop()


@pytest.mark.anyio
async def test_host_names_are_looked_up_once_and_the_working_address_kept(
    raw: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    real = loop.getaddrinfo

    async def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    eng = NativeEngine(max_connections=8, timeout=5.0, headers=None)
    try:
        # The server listens on 127.0.0.1 only; "localhost" may answer ::1 first.
        url = f"http://localhost:{raw.port}/wait?s=0.02"
        results = await asyncio.gather(*(send(eng, "GET", url) for _ in range(8)))
        assert all(r.content == b"waited" for r in results)
        assert raw.connections == 8
        assert lookups == ["localhost"]  # 8 connections opened at once, one lookup
        cached = eng._pool.dns._cache[("localhost", raw.port)][1]
        assert cached[0] == (socket.AF_INET, "127.0.0.1")  # the address that worked
        seen = (await send(eng, "GET", f"http://localhost:{raw.port}/echo")).json()
        assert seen["headers"]["host"] == f"localhost:{raw.port}"
    finally:
        await eng.aclose()


@pytest.mark.anyio
async def test_interoperates_with_the_standard_library_server() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    peers: set[tuple[str, int]] = set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as most real servers

        def do_GET(self) -> None:
            peers.add(self.client_address)
            if self.path == "/missing":
                self.send_error(404, "no such lead")
                return
            body = f"lead {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    eng = NativeEngine(max_connections=4, timeout=5.0, headers=None)
    try:
        for i in range(10):
            response = await send(eng, "GET", f"{base}/lead/{i}")
            assert response.content == f"lead /lead/{i}".encode()
        assert len(peers) == 1  # ten requests, one kept-alive connection
        missing = await send(eng, "GET", f"{base}/missing")
        assert missing.status_code == 404
        assert b"no such lead" in missing.content
        assert (await send(eng, "GET", f"{base}/after")).content == b"lead /after"
    finally:
        await eng.aclose()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.anyio
async def test_closing_fails_requests_waiting_for_a_connection(raw: RawServer) -> None:
    eng = NativeEngine(max_connections=1, timeout=2.0, headers=None)
    busy = asyncio.ensure_future(send(eng, "GET", raw.url("/wait?s=0.8")))
    await _until(lambda: raw.open == 1)
    waiting = asyncio.ensure_future(send(eng, "GET", raw.url("/page")))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await eng.aclose()
    with pytest.raises(ScrapeConnectionError, match="closed"):
        await waiting
    assert asyncio.get_running_loop().time() - started < 0.25  # not left to its timeout
    assert (await busy).content == b"waited"  # the request on the wire still completes
    assert [r["target"] for r in raw.requests] == ["/wait?s=0.8"]
