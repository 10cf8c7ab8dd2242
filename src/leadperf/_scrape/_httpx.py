"""The httpx engine: ``httpx.AsyncClient`` (h11 parser; runs on asyncio and trio).

httpx's timeouts apply per read, so a server dripping one byte a second never trips
them; one ``anyio.fail_after`` around the whole request (connect, redirects, body,
decoding) gives it the same single deadline as the other engines. The body is streamed
through httpx's decoders and counted, so a compression bomb stops at ``max_body_size``.
Proxies rotated per request get one client each (httpx fixes its proxy per client);
every client shares one cookie jar.
"""

from __future__ import annotations

import http.cookiejar
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx

from ..errors import ScrapeError
from ._engine import (
    RawHeaders,
    Response,
    check_head,
    connection_error,
    invalid_response_error,
    invalid_url_error,
    read_capped,
    scrub,
    timeout_error,
    too_large_error,
    too_many_redirects_error,
)
from ._native._decode import ACCEPT_ENCODING, BadResponse, Decoder, TooLarge, make_decoder
from ._request import DEFAULT_LIMITS, Limits, Request

__all__ = ["HttpxEngine"]

#: What httpx would ask for minus zstd: only codings decoded incrementally under the cap.
_ACCEPT_ENCODING = ACCEPT_ENCODING

#: Rotated proxies each keep a client; more distinct proxies than this are refused.
_MAX_PROXY_CLIENTS = 256


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A policy that stores nothing: with ``cookies=False`` every request stands alone."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


class HttpxEngine:
    """``httpx.AsyncClient`` (httpcore's pool): runs under trio too."""

    name = "httpx"

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
    ) -> None:
        self._timeout = timeout
        self._limits = limits
        self._max_connections = max_connections
        self._headers = dict(headers) if headers else None
        self._trust_env = trust_env
        self._jar = http.cookiejar.CookieJar(None if cookies else _NoCookies())
        self._secrets: set[str] = set()
        self._client = self._new_client(proxy)
        self._proxied: dict[str, httpx.AsyncClient] = {}

    def _new_client(self, proxy: str | None) -> httpx.AsyncClient:
        if proxy:
            password = urlsplit(proxy).password
            if password:
                self._secrets.add(password)
        return httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
            timeout=httpx.Timeout(self._timeout),
            headers={"Accept-Encoding": _ACCEPT_ENCODING, **(self._headers or {})},
            follow_redirects=True,
            max_redirects=self._limits.max_redirects,
            cookies=self._jar,
            proxy=proxy,
            trust_env=self._trust_env,
        )

    def _client_for(self, proxy: str | None) -> httpx.AsyncClient:
        if proxy is None:
            return self._client
        client = self._proxied.get(proxy)
        if client is None:
            if len(self._proxied) >= _MAX_PROXY_CLIENTS:
                raise ScrapeError(f"more than {_MAX_PROXY_CLIENTS} distinct proxies in use")
            client = self._proxied[proxy] = self._new_client(proxy)
        return client

    async def request(self, request: Request) -> Response:
        """Send ``request`` within one deadline; read the decoded body up to the cap."""
        url = request.url
        start = time.perf_counter()
        try:
            with anyio.fail_after(request.timeout):
                return await self._exchange(request, start)
        except ScrapeError:
            raise
        except TooLarge as exc:
            raise too_large_error(url, exc.what, exc.limit, exc.setting) from exc
        except BadResponse as exc:
            raise invalid_response_error(url, str(exc)) from exc
        except TimeoutError as exc:  # anyio's deadline or one of httpx's own timeouts
            raise timeout_error(url, request.timeout) from exc
        except httpx.TimeoutException as exc:
            raise timeout_error(url, request.timeout) from exc
        except httpx.TooManyRedirects as exc:
            raise too_many_redirects_error(url, self._limits.max_redirects) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise invalid_url_error(url) from exc
        except (httpx.RemoteProtocolError, httpx.DecodingError) as exc:
            text = scrub(f"{type(exc).__name__}: {exc}", self._secrets)
            if "too long" in text.lower() or "too large" in text.lower():
                raise too_large_error(
                    url, "the response head", self._limits.max_head_size, "max_head_size"
                ) from exc
            raise invalid_response_error(url, text) from exc
        except (httpx.TransportError, OSError) as exc:
            error = connection_error(url, exc)
            error.args = (scrub(str(error), self._secrets),)
            raise error from exc

    async def _exchange(self, request: Request, start: float) -> Response:
        client = self._client_for(request.proxy)
        limits = self._limits
        url = request.url
        async with client.stream(
            request.method,
            url,
            params=request.params,
            headers=request.headers or None,
            content=request.content,
            timeout=request.timeout,
            follow_redirects=request.follow_redirects,
        ) as resp:
            raw = resp.headers.raw
            check_head(url, raw, limits)
            names = {name.lower() for name, _ in raw}
            if b"transfer-encoding" in names and b"content-length" in names:
                # h11 lets chunked win; a response framed two ways is a smuggling attempt.
                raise invalid_response_error(url, "both Content-Length and Transfer-Encoding")
            coding = resp.headers.get("content-encoding", "").strip().lower().encode("latin-1")
            decoder = make_decoder(coding, limits.max_body_size) if coding else None
            if decoder is None:
                body = await read_capped(resp.aiter_raw(), url, limits.max_body_size)
            else:
                body = await _decoded(resp.aiter_raw(), decoder, url, limits.max_body_size)
        final = str(resp.url) if resp.history else url
        return Response(
            resp.status_code,
            body,
            RawHeaders(raw),
            final,
            time.perf_counter() - start,
        )

    async def aclose(self) -> None:
        """Close every client and its pooled connections."""
        clients = [self._client, *self._proxied.values()]
        self._proxied.clear()
        for client in clients:
            await client.aclose()


async def _decoded(chunks: AsyncIterator[bytes], decoder: Decoder, url: str, limit: int) -> bytes:
    """Decode ``chunks`` in bounded steps (a bomb stops at ``limit``), yielding between them.

    httpx's own decoders inflate each received chunk whole, in one call; these decode a
    bounded amount per step so the deadline can fire between steps.
    """
    out: list[bytes] = []
    async for chunk in chunks:
        decoder.push(chunk)
        while decoder.step(out):
            await anyio.lowlevel.checkpoint()
    decoder.finish()
    body = b"".join(out)
    if len(body) > limit:  # the decoders stop at the cap; this is the backstop
        raise too_large_error(url, "the decoded body", limit, "max_body_size")
    return body
