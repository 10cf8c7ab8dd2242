"""The default engine: ``aiohttp.ClientSession`` (llhttp parser, proxies, cookies).

asyncio only (under trio the scraper's default is httpx). aiohttp's own bounds are set
from :class:`Limits` (line and field sizes, header count, redirects) and the scraper's
limits are checked again on what comes back, so every engine refuses the same things.
The body is read as aiohttp decodes it, chunk by chunk, so a compression bomb stops at
``max_body_size``; ``ClientTimeout(total=...)`` covers connect to the last decoded byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._util import require
from ..errors import ConfigError, ScrapeError, UnsafeRequestError
from ._engine import (
    RawHeaders,
    Response,
    body_too_large,
    check_head,
    connection_error,
    invalid_response_error,
    invalid_url_error,
    scrub,
    timeout_error,
    too_large_error,
    too_many_redirects_error,
)
from ._request import DEFAULT_LIMITS, Limits, Request

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpEngine"]

_SOCKS = ("socks4", "socks4a", "socks5", "socks5h")


def _secrets(proxy: str | None) -> tuple[str, ...]:
    if not proxy:
        return ()
    parts = urlsplit(proxy)
    return tuple(s for s in (parts.password,) if s)


class AiohttpEngine:
    """``aiohttp.ClientSession`` over one ``TCPConnector`` (asyncio only; the default)."""

    name = "aiohttp"

    def __init__(
        self,
        *,
        max_connections: int,
        timeout: float,
        headers: Mapping[str, str] | None,
        limits: Limits = DEFAULT_LIMITS,
        proxy: str | None = None,
        trust_env: bool = True,
        cookies: bool = False,
        allow_private_networks: bool = True,
    ) -> None:
        aio = require("aiohttp", "aiohttp")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "engine: 'aiohttp' runs on asyncio only; under another event loop (trio) "
                "use engine='httpx'",
                key="engine",
            ) from None
        self._aiohttp = aio
        self._timeout = timeout
        self._limits = limits
        self._proxy: str | None = proxy
        self._secrets = _secrets(proxy)
        # Per-platform limits live above the engine, so the connector caps only the total.
        connector: aiohttp.BaseConnector
        if proxy and urlsplit(proxy).scheme.lower() in _SOCKS:
            socks = require("aiohttp_socks", "socks", "aiohttp-socks")
            connector = socks.ProxyConnector.from_url(
                proxy, limit=max_connections, limit_per_host=0
            )
            self._proxy = None  # the connector tunnels every connection itself
        else:
            resolver = None if allow_private_networks else _guarded_resolver(aio)
            connector = aio.TCPConnector(limit=max_connections, limit_per_host=0, resolver=resolver)
        # unsafe=True: a scraper's hosts are often IP addresses, whose cookies aiohttp's
        # default jar would drop.
        jar = aio.CookieJar(unsafe=True) if cookies else aio.DummyCookieJar()
        # A single header line may not be longer than the whole head may be; aiohttp's
        # own caps bound what llhttp buffers, check_head() then applies the exact totals.
        self._session: aiohttp.ClientSession = aio.ClientSession(
            connector=connector,
            timeout=aio.ClientTimeout(total=timeout),
            headers=dict(headers) if headers else None,
            raise_for_status=False,
            cookie_jar=jar,
            trust_env=trust_env,
            max_line_size=limits.max_head_size,
            max_field_size=limits.max_head_size,
            max_headers=limits.max_header_count,
        )

    async def request(self, request: Request) -> Response:
        """Send ``request``; read the decoded body up to ``max_body_size``.

        One function on purpose: every helper coroutine would be paid by every request.
        """
        aio = self._aiohttp
        url = request.url
        limits = self._limits
        kwargs: dict[str, Any] = {}
        if request.params is not None:
            kwargs["params"] = request.params
        if request.headers:
            kwargs["headers"] = request.headers
        if request.content is not None:
            kwargs["data"] = request.content
        if request.timeout != self._timeout:
            kwargs["timeout"] = aio.ClientTimeout(total=request.timeout)
        proxy = request.proxy or self._proxy
        if proxy is not None:
            kwargs["proxy"] = proxy
        start = time.perf_counter()
        try:
            async with self._session.request(
                request.method,
                url,
                allow_redirects=request.follow_redirects,
                max_redirects=limits.max_redirects + 1,  # aiohttp counts the last answer too
                **kwargs,
            ) as resp:
                try:
                    raw = resp.raw_headers
                    status = resp.status
                    read_to_close = _check_head(url, raw, limits, status, request)
                    cap = limits.max_body_size
                    length = resp.content_length
                    if (
                        length is not None
                        and length > cap
                        and "Content-Encoding" not in resp.headers
                    ):
                        raise body_too_large(url, cap)
                    conn = resp.connection
                    proto = None if conn is None else conn.protocol  # (a protocol has __len__)
                    closed = proto.closed if read_to_close and proto is not None else None
                    body = await _read(resp.content, url, cap)
                    if closed is not None and closed.done() and closed.exception() is not None:
                        # aiohttp ends a read-to-close body at a reset as if the server had
                        # finished it: the body is cut short, not complete.
                        raise invalid_response_error(url, "connection reset inside the body")
                except BaseException:
                    resp.close()  # never hand a connection in an unknown state back to the pool
                    raise
                final = str(resp.url) if resp.history else url
        except ScrapeError:
            raise
        except TimeoutError as exc:
            raise timeout_error(url, request.timeout) from exc
        except aio.TooManyRedirects as exc:
            raise too_many_redirects_error(url, limits.max_redirects) from exc
        except (aio.InvalidURL, aio.NonHttpUrlClientError) as exc:
            raise invalid_url_error(url) from exc
        except aio.ClientResponseError as exc:  # llhttp refused the response
            raise self._protocol_error(url, exc) from exc
        except aio.ClientPayloadError as exc:  # the body broke its framing or its coding
            raise self._protocol_error(url, exc) from exc
        except (aio.ClientError, OSError) as exc:
            error = connection_error(url, exc)
            error.args = (scrub(str(error), self._secrets),)
            raise error from exc
        return Response(status, body, RawHeaders(raw), final, time.perf_counter() - start)

    def _protocol_error(self, url: str, exc: BaseException) -> ScrapeError:
        text = scrub(f"{type(exc).__name__}: {exc}", self._secrets)
        cause = exc.__cause__ or exc.__context__
        names = f"{text} {type(cause).__name__ if cause else ''} {cause or ''}".lower()
        if any(m in names for m in ("too long", "too many headers", "got more than")):
            return too_large_error(
                url, "the response head", self._limits.max_head_size, "max_head_size"
            )
        return invalid_response_error(url, text)

    async def aclose(self) -> None:
        """Close the session and every pooled connection."""
        await self._session.close()


def _guarded_resolver(aio: Any) -> Any:
    """A resolver refusing private addresses at connect time (closes the DNS-rebinding gap
    between the scraper's own check and the connection)."""
    from ._urls import is_public_address

    class GuardedResolver(aio.abc.AbstractResolver):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = aio.DefaultResolver()

        async def resolve(self, host: str, port: int = 0, family: Any = 0) -> Any:
            found = await self._inner.resolve(host, port, family)
            for item in found:
                if not is_public_address(item["host"]):
                    raise UnsafeRequestError(
                        f"{host} resolves to {item['host']}, a private, loopback, link-local "
                        "or metadata address; refused because allow_private_networks=False"
                    )
            return found

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()


def _check_head(
    url: str, raw: tuple[tuple[bytes, bytes], ...], limits: Limits, status: int, request: Request
) -> bool:
    """Refuse what llhttp lets through; return True for a read-to-close body.

    Checks the head limits, a header name with white space before its colon (smuggling:
    ``Content-Length : 5`` is not ``Content-Length``), a Transfer-Encoding whose last
    coding is not chunked and an unsolicited 101.
    """
    check_head(url, raw, limits)
    framed = False
    for name, value in raw:
        if name[-1:] in (b" ", b"\t"):
            raise invalid_response_error(url, f"white space before the colon in {name!r}")
        lower = name.lower()
        if lower == b"transfer-encoding":
            if value.rpartition(b",")[2].strip().lower() != b"chunked":
                raise invalid_response_error(url, f"Transfer-Encoding {value!r} is not chunked")
            framed = True
        elif lower == b"content-length":
            framed = True
    if status == 101 and not any(k.lower() == "upgrade" for k, _ in request.headers):
        raise invalid_response_error(url, "a 101 Switching Protocols nobody asked for")
    return not framed and status >= 200 and status not in (204, 304) and request.method != "HEAD"


async def _read(stream: aiohttp.StreamReader, url: str, cap: int) -> bytes:
    """The whole decoded body, counted as aiohttp hands it over, at most ``cap`` bytes."""
    first = await stream.readany()
    if not first:
        return b""
    if len(first) > cap:
        raise body_too_large(url, cap)
    second = await stream.readany()
    if not second:
        return first  # the common small body: no list, no join
    parts = [first, second]
    size = len(first) + len(second)
    while True:
        if size > cap:
            raise body_too_large(url, cap)
        chunk = await stream.readany()
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        parts.append(chunk)
