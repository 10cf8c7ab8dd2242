"""Hostile-server conformance: every engine against the same malformed and hostile answers.

Each case scripts raw bytes on a socket server on 127.0.0.1 (tests/hostile_server.py),
sends one request through an engine built by ``make_engine`` (or, for request-side cases,
through ``AsyncScraper``, which checks what goes on the wire for every engine) and asserts
both what the engine returned or raised and what bytes reached the server. Where aiohttp
or httpx themselves accept something, the expected outcome says so: the table in
docs/scraper.md is printed from these same cases by::

    python3 tests/test_conformance.py
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import brotli
import pytest

from engines import ENGINES
from hostile_server import HostileServer, Script, drip, raw, reset_after, response
from leadperf import Settings
from leadperf._scrape._engine import make_engine
from leadperf._scrape._request import Limits, Request
from leadperf.scraper import AsyncScraper, RetryPolicy

MiB = 1024 * 1024
SMALL = Limits(max_body_size=1 * MiB)


@dataclass
class Seen:
    """What one case observed: the outcome, the response (if any), time, server state."""

    outcome: str
    body: bytes = b""
    elapsed: float = 0.0
    headers: Any = None
    url: str = ""
    server: HostileServer | None = None


@dataclass
class Case:
    """One hostile answer (or unsafe request) and what each engine must make of it."""

    id: str
    title: str
    routes: Callable[[HostileServer], str]  # installs routes; returns the URL to request
    expect: dict[str, set[str]]  # engine -> allowed outcomes
    check: Callable[[Seen], None] | None = None
    limits: Limits = field(default_factory=Limits)
    timeout: float = 3.0
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    via_scraper: bool = False
    note: str = ""


def every(*outcomes: str) -> dict[str, set[str]]:
    return {e: set(outcomes) for e in ("aiohttp", "httpx", "native")}


def but(base: dict[str, set[str]], **engines: set[str]) -> dict[str, set[str]]:
    return {**base, **engines}


INVALID = "InvalidResponseError"
TOO_LARGE = "ResponseTooLargeError"
UNSAFE = "UnsafeRequestError"


def outcome_of(exc: BaseException) -> str:
    return type(exc).__name__


# -- bombs (built once; the brotli one takes a couple of seconds) -------------------------

_BOMBS: dict[str, bytes] = {}


def brotli_bomb() -> bytes:
    """1 GiB of zeros as brotli: about 1.6 KB."""
    if "br" not in _BOMBS:
        compressor = brotli.Compressor(quality=5)
        zeros = b"\0" * MiB
        parts = [compressor.process(zeros) for _ in range(1024)]
        parts.append(compressor.finish())
        _BOMBS["br"] = b"".join(parts)
    return _BOMBS["br"]


def gzip_bomb() -> bytes:
    """64 MiB of zeros as gzip: about 64 KB."""
    if "gzip" not in _BOMBS:
        _BOMBS["gzip"] = gzip.compress(b"\0" * (64 * MiB), compresslevel=9)
    return _BOMBS["gzip"]


# -- cases --------------------------------------------------------------------------------


def at(path: str, script: Script) -> Callable[[HostileServer], str]:
    return lambda server: server.route(path, script)


def framing(headers: str, body: bytes = b"hello") -> Script:
    return raw(b"HTTP/1.1 200 OK\r\n" + headers.encode("latin-1") + b"\r\n\r\n" + body)


def nothing_sent(seen: Seen) -> None:
    assert seen.server is not None
    assert seen.server.requests == [], seen.server.requests


def one_request(seen: Seen) -> None:
    assert seen.server is not None
    assert len(seen.server.requests) == 1


def reused_after_101(server: HostileServer) -> str:
    server.route("/upgrade", raw(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", keep=True))
    server.route("/after", raw(response(b"after"), keep=True))
    return server.url("/upgrade")


def utf8_location(server: HostileServer) -> str:
    server.route("/caf%C3%A9", raw(response(b"cafe"), keep=True))
    location = "/café".encode()
    head = b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    return server.route("/moved", raw(head, keep=True))


def followed_utf8(seen: Seen) -> None:
    assert seen.server is not None
    assert seen.server.targets[-1] == b"/caf%C3%A9", seen.server.targets
    assert seen.body == b"cafe"


def redirect_loop(server: HostileServer) -> str:
    head = b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n"
    return server.route("/loop", raw(head, keep=True))


def bounded_redirects(seen: Seen) -> None:
    assert seen.server is not None
    assert len(seen.server.requests) <= 21, len(seen.server.requests)


def leftover(server: HostileServer) -> str:
    smuggled = response(b"SMUGGLED")
    server.route("/first", raw(response(b"first") + smuggled, keep=True))
    return server.url("/first")


def one_byte_chunks(server: HostileServer) -> str:
    chunks = b"1\r\nx\r\n" * MiB + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return server.route("/chunks", raw(head + chunks))


def full_megabyte(seen: Seen) -> None:
    if seen.outcome == "ScrapeTimeoutError":  # the deadline held (httpx): within its bound
        assert seen.elapsed < 8.0 + 1.5, seen.elapsed
        return
    assert seen.body == b"x" * MiB
    assert seen.elapsed < 8.0, seen.elapsed


def quickly(limit: float) -> Callable[[Seen], None]:
    def check(seen: Seen) -> None:
        assert seen.elapsed < limit, f"took {seen.elapsed:.2f} s"

    return check


def gzip_members(server: HostileServer) -> str:
    body = gzip.compress(b"first ") + gzip.compress(b"second")
    return server.route(
        "/members",
        raw(response(body, headers=(("Content-Encoding", "gzip"),))),
    )


def bomb(kind: str) -> Callable[[HostileServer], str]:
    def install(server: HostileServer) -> str:
        body = brotli_bomb() if kind == "br" else gzip_bomb()
        return server.route(
            f"/bomb-{kind}", raw(response(body, headers=(("Content-Encoding", kind),)))
        )

    return install


CASES: list[Case] = [
    # request side: checked by the scraper before any engine sees the request
    Case(
        "crlf-method",
        "CR/LF inside the method",
        at("/", raw(response())),
        every(UNSAFE),
        nothing_sent,
        method="GET /x HTTP/1.1\r\nX-Injected: 1\r\nX-Pad:",
        via_scraper=True,
    ),
    Case(
        "ctl-in-path",
        "NUL, VT, DEL in the URL path",
        lambda s: s.url("/a\x00b\x0bc\x7f"),
        every(UNSAFE),
        nothing_sent,
        via_scraper=True,
    ),
    Case(
        "ctl-in-header",
        "CR/LF or NUL in a header value",
        lambda s: s.url("/"),
        every(UNSAFE),
        nothing_sent,
        headers=(("X-A", "a\r\nX-Injected: 1\x00"),),
        via_scraper=True,
    ),
    # framing
    Case(
        "two-content-lengths",
        "two different Content-Length",
        at("/cl2", framing("Content-Length: 5\r\nContent-Length: 3", b"hello")),
        every(INVALID),
    ),
    Case(
        "cl-and-te",
        "Content-Length plus Transfer-Encoding: chunked",
        at("/clte", framing("Content-Length: 5\r\nTransfer-Encoding: chunked", b"0\r\n\r\n")),
        every(INVALID),
    ),
    Case(
        "xchunked",
        "Transfer-Encoding: xchunked",
        at("/xte", framing("Transfer-Encoding: xchunked", b"5\r\nhello\r\n0\r\n\r\n")),
        every(INVALID),
    ),
    *(
        Case(
            f"cl-{name}",
            f"Content-Length {value}",
            at(f"/cl-{name}", framing(f"Content-Length: {value}", b"hello")),
            every(INVALID),
        )
        for name, value in (("plus", "+5"), ("underscore", "1_0"), ("hex", "0x5"))
    ),
    Case(
        "chunk-size-int-syntax",
        "chunk size 0x5",
        at("/chunk-hex", framing("Transfer-Encoding: chunked", b"0x5\r\nhello\r\n0\r\n\r\n")),
        every(INVALID),
    ),
    Case(
        "nul-in-header",
        "NUL in a header value",
        at("/nul", framing("Content-Length: 5\r\nX-A: a\x00b", b"hello")),
        every(INVALID),
    ),
    Case(
        "bare-cr-in-header",
        "bare CR in a header value",
        at("/cr", framing("Content-Length: 5\r\nX-A: a\rb", b"hello")),
        every(INVALID),
    ),
    *(
        Case(
            f"status-{name}",
            f"status line {code}",
            at(f"/status-{name}", raw(f"HTTP/1.1 {code} OK\r\nContent-Length: 0\r\n\r\n".encode())),
            every(INVALID),
        )
        for name, code in (("minus", "-1"), ("underscore", "2_0"))
    ),
    Case(
        "space-before-colon",
        "Content-Length : 5 (space before the colon)",
        at("/sp", framing("Content-Length : 5", b"hello")),
        every(INVALID),
    ),
    Case(
        "unsolicited-101",
        "an unsolicited 101, then the connection",
        reused_after_101,
        every(INVALID),
    ),
    # limits
    Case(
        "huge-header-line",
        "a 100 KB header line in one segment",
        at("/big-head", framing("Content-Length: 2\r\nX-Big: " + "a" * 100_000, b"ok")),
        every(TOO_LARGE),
    ),
    Case(
        "many-headers",
        "200 header fields",
        at(
            "/many",
            framing("Content-Length: 2\r\n" + "\r\n".join(f"X-{i}: v" for i in range(200)), b"ok"),
        ),
        every(TOO_LARGE),
    ),
    Case(
        "body-over-cap",
        "a 2 MiB body, max_body_size 1 MiB",
        at("/large", raw(response(b"x" * (2 * MiB)))),
        every(TOO_LARGE),
        limits=SMALL,
    ),
    Case(
        "chunked-over-cap",
        "a 2 MiB chunked body, max_body_size 1 MiB",
        at(
            "/large-chunked",
            framing("Transfer-Encoding: chunked", (b"10000\r\n" + b"x" * 65536 + b"\r\n") * 32),
        ),
        every(TOO_LARGE),
        limits=SMALL,
    ),
    Case(
        "brotli-bomb",
        "a 1.6 KB brotli body inflating to 1 GiB",
        bomb("br"),
        every(TOO_LARGE),
        quickly(2.5),
        limits=SMALL,
    ),
    Case(
        "gzip-bomb",
        "a 64 KB gzip body inflating to 64 MiB",
        bomb("gzip"),
        every(TOO_LARGE),
        quickly(2.5),
        limits=SMALL,
    ),
    Case(
        "one-byte-chunks",
        "1 MiB of 1-byte chunks in one write",
        one_byte_chunks,
        but(
            every("HTTP 200 1048576 bytes"),
            httpx={"HTTP 200 1048576 bytes", "ScrapeTimeoutError"},
        ),
        full_megabyte,
        timeout=8.0,
        note="h11 needs about 8 s for a mebibyte of one-byte chunks here: it returns the "
        "whole body within the deadline or the deadline stops it, depending on the machine",
    ),
    Case(
        "drip",
        "a body dripping 1 byte per 0.25 s, timeout 1.5 s",
        at("/drip", drip(response(b"x" * 100), 0.25)),
        every("ScrapeTimeoutError"),
        quickly(2.5),
        timeout=1.5,
    ),
    # wrong data
    Case(
        "reset-read-to-close",
        "a reset inside a read-to-close body",
        at("/reset", reset_after(b"HTTP/1.1 200 OK\r\n\r\npartial body")),
        every(INVALID, "ScrapeConnectionError"),
        lambda seen: None,
    ),
    Case(
        "utf8-location",
        "a raw UTF-8 Location (/café)",
        utf8_location,
        every("HTTP 200 'cafe'"),
        followed_utf8,
    ),
    Case(
        "gzip-members",
        "a two-member gzip body",
        gzip_members,
        every("HTTP 200 'first second'"),
    ),
    Case(
        "redirect-loop",
        "a redirect loop",
        redirect_loop,
        every("TooManyRedirectsError"),
        bounded_redirects,
    ),
    Case(
        "leftover-bytes",
        "bytes after the response (a second response smuggled in)",
        leftover,
        every("HTTP 200 'first'"),
        one_request,
    ),
]


# -- running one case ---------------------------------------------------------------------


def describe(status: int, body: bytes) -> str:
    if len(body) > 64:
        return f"HTTP {status} {len(body)} bytes"
    text = repr(body.decode("latin-1"))
    return f"HTTP {status} {text}"


async def run_case(case: Case, engine_name: str, server: HostileServer) -> Seen:
    url = case.routes(server)
    start = time.perf_counter()
    if case.via_scraper:
        async with AsyncScraper(
            engine=engine_name,
            settings=Settings(),
            retry=RetryPolicy(attempts=1),
            trust_env=False,
        ) as scraper:
            result = await scraper.fetch(url, method=case.method, headers=dict(case.headers))
        elapsed = time.perf_counter() - start
        if result.error is not None:
            return Seen(outcome_of(result.error), elapsed=elapsed, server=server)
        return Seen(describe(result.status_code or 0, result.content), result.content, elapsed)
    engine = make_engine(
        engine_name,
        max_connections=4,
        timeout=case.timeout,
        headers=None,
        limits=case.limits,
        trust_env=False,
    )
    try:
        with anyio.fail_after(case.timeout + 10):  # a hung engine fails the test, not CI
            response_ = await engine.request(
                Request(case.method, url, case.timeout, headers=case.headers)
            )
            seen = Seen(
                describe(response_.status_code, response_.content),
                response_.content,
                time.perf_counter() - start,
                response_.headers,
                response_.url,
                server,
            )
            if case.id == "unsolicited-101":
                await engine.request(Request("GET", server.url("/after"), case.timeout))
            return seen
    except Exception as exc:
        return Seen(outcome_of(exc), elapsed=time.perf_counter() - start, server=server)
    finally:
        await engine.aclose()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as srv:
        yield srv


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_engine_conformance(
    case: Case, engine: str, server: HostileServer, reliability: Any
) -> None:
    seen = await run_case(case, engine, server)
    seen.server = server
    reliability.record(
        "scraper conformance",
        f"{case.title} ({engine} engine)",
        " or ".join(sorted(case.expect[engine])),
        f"{seen.outcome} in {seen.elapsed:.2f} s; the server received "
        f"{len(server.requests)} request(s), {sum(map(len, server.requests))} bytes",
    )
    assert seen.outcome in case.expect[engine], (
        f"{engine} on {case.title}: {seen.outcome}, expected one of {case.expect[engine]}"
    )
    if case.check is not None:
        case.check(seen)
    if case.id == "unsolicited-101" and seen.outcome.startswith("HTTP"):
        # After a 101 the connection belongs to another protocol: never reused.
        assert server.requests_per_connection[0] == 1, server.requests_per_connection


# -- the table for docs/scraper.md --------------------------------------------------------


async def _table() -> str:
    engines = ["aiohttp", "httpx", "native"]
    lines = [
        "| case | " + " | ".join(engines) + " |",
        "|---|" + "---|" * len(engines),
    ]
    notes: list[str] = []
    for case in CASES:
        cells = []
        for engine in engines:
            with HostileServer() as server:
                seen = await run_case(case, engine, server)
            mark = "" if seen.outcome in case.expect[engine] else " (UNEXPECTED)"
            lenient = "" if case.expect[engine] == case.expect["aiohttp"] else " ¹"
            cells.append(f"{seen.outcome.replace('|', '/')}{lenient}{mark}")
        if case.note:
            notes.append(f"- {case.title}: {case.note}.")
        lines.append(f"| {case.title} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + "\n\n¹ the library's own behaviour, recorded as is:\n" + "\n".join(notes)
    )


if __name__ == "__main__":  # print the case x engine table
    sys.stdout.write(anyio.run(_table) + "\n")
