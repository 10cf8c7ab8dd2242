"""The scraper's one seam for its HTTP engine, and the httpx-style response it returns.

Everything above :class:`Engine` is engine-agnostic: the scraper only calls
``request()`` and ``aclose()``. Engines map their own exceptions onto leadperf's
(:class:`ScrapeTimeoutError`, :class:`ScrapeConnectionError`, :class:`InvalidURLError`), so
retry decisions never depend on which engine runs.
"""

from __future__ import annotations

import json as _json
import time
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .._util import mask_url, require
from ..errors import (
    ConfigError,
    HTTPStatusError,
    InvalidURLError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ENGINES",
    "AiohttpEngine",
    "Engine",
    "HttpxEngine",
    "RawHeaders",
    "Response",
    "make_engine",
]

ENGINES = ("native", "aiohttp", "httpx")
_UTF = ("utf8", "utf16", "utf32")


def charset_of(headers: httpx.Headers) -> str:
    """The charset named by ``Content-Type``, else utf-8 (what httpx assumes too)."""
    ctype: str | None = headers.get("content-type")
    if ctype:
        for param in ctype.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip("\"' ")
    return "utf-8"


def decode(content: bytes, headers: httpx.Headers) -> str:
    """Decode a body by its declared charset; unknown charsets and bad bytes never raise."""
    try:
        return content.decode(charset_of(headers), errors="replace")
    except LookupError:
        return content.decode("utf-8", errors="replace")


class RawHeaders(httpx.Headers):
    """:class:`httpx.Headers` over raw ``(name, value)`` byte pairs, parsed on first use.

    Most bulk responses never have their headers read, so building httpx's lookup list
    (a lower-cased copy of every name) waits until a method needs it.
    """

    # Slots and one flat tuple of bytes (no dict, no tuple per header): a kept result adds
    # few objects for the garbage collector to count, so 100K kept results collect less.
    __slots__ = ("_encoding", "_flat", "_parsed")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:  # no super(): lazy
        self._flat: tuple[bytes, ...] | None = tuple(chain.from_iterable(raw))
        self._parsed: list[tuple[bytes, bytes, bytes]] | None = None
        self._encoding = None

    @classmethod
    def from_flat(cls, flat: tuple[bytes, ...]) -> RawHeaders:
        """Headers over ``(name0, value0, name1, value1, ...)`` as an engine parsed them."""
        self = cls.__new__(cls)
        self._flat, self._parsed, self._encoding = flat, None, None
        return self

    @property  # httpx.Headers keeps a plain attribute here; same type, built on first use
    def _list(self) -> list[tuple[bytes, bytes, bytes]]:
        parsed = self._parsed
        if parsed is None:
            flat = self._flat or ()
            pairs = zip(flat[::2], flat[1::2], strict=True)
            parsed = [(key, key.lower(), value) for key, value in pairs]
            self._parsed, self._flat = parsed, None
        return parsed

    @_list.setter
    def _list(self, value: list[tuple[bytes, bytes, bytes]]) -> None:
        self._flat = None
        self._parsed = value

    def __repr__(self) -> str:  # shown as what it is to users: httpx.Headers
        return repr(httpx.Headers(self))


class Response:
    """An httpx-style response: ``status_code``, ``content``, ``text``, ``headers``, ``json()``.

    ``headers`` is an :class:`httpx.Headers` (case-insensitive, multi-valued) whatever the
    engine. ``elapsed`` is the request's wall time in seconds.
    """

    __slots__ = ("_text", "content", "elapsed", "from_cache", "headers", "status_code", "url")

    def __init__(
        self,
        status_code: int,
        content: bytes,
        headers: httpx.Headers,
        url: str,
        elapsed: float = 0.0,
        *,
        from_cache: bool = False,
    ) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers
        self.url = url
        self.elapsed = elapsed
        self.from_cache = from_cache
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The body decoded by the ``Content-Type`` charset (utf-8 by default)."""
        if self._text is None:
            self._text = decode(self.content, self.headers)
        return self._text

    @property
    def encoding(self) -> str:
        """The charset used by :attr:`text`."""
        return charset_of(self.headers)

    @property
    def is_success(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300

    def json(self, **kwargs: Any) -> Any:
        """Parse the body as JSON (``json.loads`` keyword arguments pass through)."""
        if charset_of(self.headers).lower().replace("-", "").replace("_", "") in _UTF:
            return _json.loads(self.content, **kwargs)
        return _json.loads(self.text, **kwargs)  # a declared non-UTF charset

    def raise_for_status(self) -> Response:
        """Raise :class:`HTTPStatusError` for a 4xx or 5xx status; return ``self`` otherwise."""
        if self.status_code >= 400:
            raise HTTPStatusError(
                f"{mask_url(self.url)} answered HTTP {self.status_code}",
                url=self.url,
                status_code=self.status_code,
            )
        return self

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}] {mask_url(self.url)} {len(self.content)} bytes>"


def timeout_error(url: str, seconds: float) -> ScrapeTimeoutError:
    """The error every engine raises when a request runs out of time."""
    return ScrapeTimeoutError(
        f"{mask_url(url)} did not answer within {seconds} s; raise the timeout or slow down",
        url=url,
    )


def connection_error(url: str, exc: BaseException) -> ScrapeConnectionError:
    """The error every engine raises when the connection fails under a request."""
    return ScrapeConnectionError(
        f"{mask_url(url)}: connection failed ({type(exc).__name__}: {exc})", url=url
    )


def invalid_url_error(url: str) -> InvalidURLError:
    """The error every engine raises for a URL it cannot send."""
    return InvalidURLError(f"{mask_url(url)} is not a valid http(s) URL", url=url)


class Engine(Protocol):
    """What the scraper needs from an HTTP engine: one pooled ``request`` and ``aclose``."""

    name: str

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        """Send one request and read the whole body; raise leadperf's ScrapeError kinds."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


class AiohttpEngine:
    """``aiohttp.ClientSession`` over one ``TCPConnector`` (asyncio only; the fast default)."""

    name = "aiohttp"

    def __init__(
        self, *, max_connections: int, timeout: float, headers: Mapping[str, str] | None
    ) -> None:
        import asyncio

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
        # Per-platform limits live above the engine, so the connector caps only the total.
        connector = aio.TCPConnector(limit=max_connections, limit_per_host=0)
        self._session: aiohttp.ClientSession = aio.ClientSession(
            connector=connector,
            timeout=aio.ClientTimeout(total=timeout),
            headers=dict(headers) if headers else None,
            raise_for_status=False,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        aiohttp = self._aiohttp
        kwargs: dict[str, Any] = {}
        if params is not None:
            kwargs["params"] = params
        if headers is not None:
            kwargs["headers"] = headers
        if content is not None or data is not None:
            kwargs["data"] = content if content is not None else data
        if json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        start = time.perf_counter()
        try:
            async with self._session.request(
                method, url, allow_redirects=follow_redirects, **kwargs
            ) as resp:
                body = await resp.read()
                status = resp.status
                raw = resp.raw_headers
                final = str(resp.url) if resp.history else url
        except TimeoutError as exc:
            raise timeout_error(url, self._timeout if timeout is None else timeout) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise invalid_url_error(url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_error(url, exc) from exc
        return Response(status, body, RawHeaders(raw), final, time.perf_counter() - start)

    async def aclose(self) -> None:
        await self._session.close()


class HttpxEngine:
    """``httpx.AsyncClient`` (httpcore's pool): slower, for users who need httpx's features."""

    name = "httpx"

    def __init__(
        self, *, max_connections: int, timeout: float, headers: Mapping[str, str] | None
    ) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(timeout),
            headers=dict(headers) if headers else None,
            follow_redirects=True,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        start = time.perf_counter()
        try:
            resp = await self._client.request(
                method,
                url,
                params=params,
                headers=headers,
                content=content,
                data=data,
                json=json,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                follow_redirects=follow_redirects,
            )
        except httpx.TimeoutException as exc:
            raise timeout_error(url, self._timeout if timeout is None else timeout) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise invalid_url_error(url) from exc
        except (httpx.TransportError, OSError) as exc:
            raise connection_error(url, exc) from exc
        final = str(resp.url) if resp.history else url
        return Response(
            resp.status_code, resp.content, resp.headers, final, time.perf_counter() - start
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def make_engine(
    name: str, *, max_connections: int, timeout: float, headers: Mapping[str, str] | None
) -> Engine:
    """Build the engine called ``name`` (``"native"``, ``"aiohttp"`` or ``"httpx"``)."""
    if name == "native":
        from ._native import NativeEngine

        return NativeEngine(max_connections=max_connections, timeout=timeout, headers=headers)
    if name == "aiohttp":
        return AiohttpEngine(max_connections=max_connections, timeout=timeout, headers=headers)
    if name == "httpx":
        return HttpxEngine(max_connections=max_connections, timeout=timeout, headers=headers)
    raise ConfigError(f"engine: must be one of {', '.join(ENGINES)}, got {name!r}", key="engine")
