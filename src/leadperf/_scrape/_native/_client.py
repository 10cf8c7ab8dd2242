"""The native engine: one :class:`Request` in, one decoded :class:`Response` out.

One deadline bounds the whole request (connect, send, every redirect, reading and
decoding the body): a timer set at the deadline fails the response's future, and decoding
runs as the body arrives, before that future resolves. A stale keep-alive connection
(closed by the server while idle, before a byte of the answer) gets one resend for an
idempotent method; nothing else is retried here (retries belong to the scraper).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from urllib.parse import urljoin

from ... import __version__
from ..._util import mask_url
from ...errors import (
    ConfigError,
    InvalidResponseError,
    ResponseTooLargeError,
    TooManyRedirectsError,
    UnsafeRequestError,
)
from .. import _engine as seam  # the module, not its names: no import cycle either way
from .._request import DEFAULT_LIMITS, Limits, Request
from ._decode import ACCEPT_ENCODING
from ._parser import BadResponse, Exchange, TooLarge
from ._pool import Origin, Pool
from ._wire import (
    PLAIN_URL,
    Target,
    check_method,
    checked_headers,
    header_block,
    location_url,
    parse_url,
    without,
)

__all__ = ["NativeEngine"]

_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_USER_AGENT = f"leadperf/{__version__}"


class NativeEngine:
    """leadperf's own HTTP/1.1 engine on httptools (llhttp); asyncio only, opt-in.

    No proxies (a request naming one is refused), no cookie jar, no HTTP/2, whole bodies
    only. Every response is held to ``limits``; see the package docstring.

    Args:
        max_connections: open connections at most, over every origin.
        timeout: seconds for a whole request (the scraper passes each request's own).
        headers: sent with every request; checked here.
        limits: response limits enforced on every request.

    Raises:
        ConfigError: no running asyncio event loop (under trio use engine='httpx').
        UnsafeRequestError: a default header that could not go on the wire as given.
    """

    name = "native"

    def __init__(
        self,
        *,
        max_connections: int,
        timeout: float,
        headers: Mapping[str, str] | None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "engine: 'native' runs on asyncio only; under another event loop (trio) "
                "use engine='httpx'",
                key="engine",
            ) from None
        self._timeout = timeout
        self.limits = limits
        defaults = {"User-Agent": _USER_AGENT, "Accept": "*/*", "Accept-Encoding": ACCEPT_ENCODING}
        self._defaults = checked_headers({**defaults, **(headers or {})}.items())
        self._default_block = header_block(self._defaults)
        self._pool = Pool(max_connections, limits)
        self._origins: dict[str, tuple[Origin, str]] = {}  # "scheme://netloc" -> origin
        self._methods: set[str] = set()  # methods already checked

    def _target(self, url: str, params: Mapping[str, object] | None) -> Target:
        # The bulk case, a plain http(s)://host[:port]/ascii-path URL, skips urlsplit and
        # reuses the origin parsed for its scheme and netloc; anything else: full parse.
        match = None if params else PLAIN_URL.match(url)
        if match is None or not url.isascii():
            return parse_url(url, params)
        prefix = url[: match.end(1)]
        known = self._origins.get(prefix)
        if known is None:
            target = parse_url(url, None)
            if len(self._origins) >= 1024:
                self._origins.clear()
            self._origins[prefix] = (target.origin, target.host_header)
            return target
        rest = match.group(2)
        if not rest:
            rest = "/"
        elif rest[0] == "?":
            rest = "/" + rest
        return Target(url, known[0], rest, known[1], None)

    def _method(self, method: str) -> str:
        if method in self._methods:
            return method.upper()
        checked = check_method(method)
        if len(self._methods) < 64:
            self._methods.add(method)
        return checked

    async def request(self, request: Request) -> seam.Response:
        """Send one request, follow redirects, return the decoded response.

        Raises:
            ConfigError: the request names a proxy (this engine has none).
            UnsafeRequestError: a method, header or URL that would put control bytes or
                a non-token on the wire.
            InvalidURLError: not an absolute http(s) URL (also for a redirect target).
            ScrapeTimeoutError: the whole exchange did not finish within the timeout.
            InvalidResponseError: malformed or conflicting framing, a truncated body.
            ResponseTooLargeError: the response passed one of the limits.
            TooManyRedirectsError: more than ``limits.max_redirects`` redirects.
            ScrapeConnectionError: the connection failed.
        """
        url = request.url
        if request.proxy:
            raise ConfigError(
                "engine: 'native' does not support proxies; use engine='aiohttp' for "
                f"requests through a proxy ({mask_url(request.proxy)})",
                key="proxy",
            )
        start = time.perf_counter()
        budget = request.timeout
        deadline = self._loop.time() + budget
        body = request.content or b""
        try:
            method = self._method(request.method)
            if request.headers:
                block = header_block({**self._defaults, **_framed(request.headers, body)})
            else:
                block = self._default_block
            target = self._target(url, request.params)
            exchange, target = await self._follow(
                method, target, block, body, deadline, request.follow_redirects
            )
        except UnsafeRequestError as exc:
            exc.url = url
            raise
        except TimeoutError as exc:
            raise seam.timeout_error(url, budget) from exc
        except BadResponse as exc:
            raise InvalidResponseError(f"{mask_url(url)}: {exc}", url=url) from exc
        except TooLarge as exc:
            raise ResponseTooLargeError(
                f"{mask_url(url)}: {exc}; raise {exc.setting} if such responses are expected",
                url=url,
            ) from exc
        except OSError as exc:
            raise seam.connection_error(url, exc) from exc
        return seam.Response(
            exchange.status,
            exchange.body,
            seam.RawHeaders.from_flat(exchange.headers),
            target.url,
            time.perf_counter() - start,
        )

    async def _follow(
        self,
        method: str,
        target: Target,
        block: str,
        body: bytes,
        deadline: float,
        follow: bool,
    ) -> tuple[Exchange, Target]:
        """The response at the end of the redirect chain, and where it came from."""
        limit = self.limits.max_redirects
        first = target.url
        for _ in range(limit + 1):
            exchange = await self._exchange(method, target, block, body, deadline)
            status = exchange.status
            if not follow or status not in _REDIRECTS:
                return exchange, target
            location = _header(exchange.headers, b"location")
            if location is None:
                return exchange, target
            new_target = parse_url(urljoin(target.url, location_url(location)), None)
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, body = "GET", b""
                block = without(block, ("content-type", "content-length"))
            if new_target.origin != target.origin:
                block = without(block, ("authorization", "cookie", "host"))
            target = new_target
        raise TooManyRedirectsError(
            f"{mask_url(first)}: more than {limit} redirects (a loop or a long chain); "
            "raise max_redirects if the chain is expected",
            url=first,
        )

    async def _exchange(
        self, method: str, target: Target, block: str, body: bytes, deadline: float
    ) -> Exchange:
        loop = self._loop
        pool = self._pool
        data = _head(method, target, block, body)
        for fresh_try in (False, True):
            if loop.time() >= deadline:
                raise TimeoutError
            conn = pool.take_idle(target.origin, loop.time())
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.connect(target.origin, loop)
            reused = conn.uses > 0
            waiter: asyncio.Future[Exchange] = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn.send(data, method == "HEAD", waiter)
                exchange = await waiter
            except ConnectionResetError:
                timer.cancel()
                pool.release(conn, 0.0)
                # A reused connection the server closed while idle: safe to send again.
                if reused and not conn.got_bytes and not fresh_try and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                timer.cancel()
                conn.abort()
                pool.release(conn, 0.0)
                raise
            timer.cancel()
            pool.release(conn, loop.time())
            return exchange
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every pooled connection; requests waiting for one fail at once."""
        self._pool.close()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost


def _head(method: str, target: Target, block: str, body: bytes) -> bytes:
    """The request head and body as bytes (every part was checked before)."""
    auth = ""
    if target.auth is not None and "authorization:" not in block.lower():
        auth = f"Authorization: {target.auth}\r\n"
    length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
    host = "" if block.startswith("Host: ") or "\nHost: " in block else target.host_header
    host_line = f"Host: {host}\r\n" if host else ""
    head = f"{method} {target.target} HTTP/1.1\r\n{host_line}{block}{auth}{length}\r\n"
    return head.encode("latin-1") + body


def _framed(headers: tuple[tuple[str, str], ...], body: bytes) -> dict[str, tuple[str, str]]:
    """Checked request headers, minus the framing the engine writes itself.

    A second ``Content-Length`` or a ``Transfer-Encoding`` next to ours would let the
    server and a proxy in front of it disagree on where the request ends.

    Raises:
        UnsafeRequestError: a ``Content-Length`` other than the body's length, or a
            ``Transfer-Encoding`` (the engine sends whole bodies only).
    """
    checked = checked_headers(headers)
    length = checked.pop("content-length", None)
    if length is not None and length[1].strip() != str(len(body)):
        raise UnsafeRequestError(
            f"Content-Length {length[1][:20]!r} does not match the {len(body)}-byte body; "
            "leave it out (the engine sets it)"
        )
    if "transfer-encoding" in checked:
        raise UnsafeRequestError(
            "Transfer-Encoding cannot be set: the engine sends whole bodies with a Content-Length"
        )
    return checked


def _expire(waiter: asyncio.Future[Exchange]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _header(flat: tuple[bytes, ...], name: bytes) -> bytes | None:
    for i in range(0, len(flat), 2):
        if flat[i].lower() == name:
            return flat[i + 1]
    return None
