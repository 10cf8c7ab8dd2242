"""The scraper's one seam for its HTTP engine, and the httpx-style response it returns.

Everything above :class:`Engine` is engine-agnostic: the scraper builds one
:class:`~leadperf._scrape._request.Request` and calls ``request(request)`` and ``aclose()``
(httpcore's ``handle_async_request`` is the model). Engines map their own exceptions onto
leadperf's (:class:`ScrapeTimeoutError`, :class:`ScrapeConnectionError`,
:class:`InvalidResponseError`, :class:`ResponseTooLargeError`,
:class:`TooManyRedirectsError`, :class:`InvalidURLError`), so retry decisions never depend
on which engine runs. The engines themselves live in ``_aiohttp``, ``_httpx`` and
``_native``.
"""

from __future__ import annotations

import json as _json
import os
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .._util import mask_url
from ..errors import (
    ConfigError,
    HTTPStatusError,
    InvalidResponseError,
    InvalidURLError,
    ResponseTooLargeError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
    TooManyRedirectsError,
)
from ._request import DEFAULT_LIMITS, Limits, Request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "ENGINES",
    "Engine",
    "RawHeaders",
    "Response",
    "make_engine",
]

ENGINES = ("aiohttp", "httpx", "native")
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


def too_large_error(url: str, what: str, limit: int, setting: str) -> ResponseTooLargeError:
    """The error every engine raises when a response passes one of its :class:`Limits`."""
    return ResponseTooLargeError(
        f"{mask_url(url)}: {what} is over the limit of {limit}; raise {setting} if such "
        "responses are expected",
        url=url,
    )


def body_too_large(url: str, limit: int) -> ResponseTooLargeError:
    """The error for a decoded body over ``max_body_size``."""
    return too_large_error(url, "the decoded body", limit, "max_body_size")


def too_many_redirects_error(url: str, limit: int) -> TooManyRedirectsError:
    """The error every engine raises for a redirect loop or a chain over the limit."""
    return TooManyRedirectsError(
        f"{mask_url(url)}: more than {limit} redirects (a loop?); raise max_redirects if the "
        "chain is expected",
        url=url,
    )


def invalid_response_error(url: str, exc: BaseException | str) -> InvalidResponseError:
    """The error every engine raises for a malformed response."""
    detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return InvalidResponseError(f"{mask_url(url)}: malformed response ({detail})", url=url)


def head_size(raw: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
    """``(bytes, fields)`` of a parsed head's header block (each field as ``name: value\r\n``)."""
    size = count = 0
    for name, value in raw:
        size += len(name) + len(value) + 4
        count += 1
    return size, count


def check_head(url: str, raw: Sequence[tuple[bytes, bytes]], limits: Limits) -> None:
    """Raise :class:`ResponseTooLargeError` when a parsed head is over the head limits."""
    if len(raw) > limits.max_header_count:
        raise too_large_error(
            url, f"{len(raw)} header fields", limits.max_header_count, "max_header_count"
        )
    size, _ = head_size(raw)
    if size > limits.max_head_size:
        raise too_large_error(url, f"a {size}-byte head", limits.max_head_size, "max_head_size")


async def read_capped(chunks: AsyncIterator[bytes], url: str, limit: int) -> bytes:
    """Join decoded ``chunks`` while counting; stop at ``limit`` with the typed error."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise body_too_large(url, limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def env_proxies() -> dict[str, str]:
    """The proxies the environment sets (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``)."""
    found = urllib.request.getproxies_environment()
    if os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).strip() == "*":
        return {}
    return {k: v for k, v in found.items() if k in ("http", "https", "all") and v}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (proxy passwords in library errors)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Engine(Protocol):
    """What the scraper needs from an HTTP engine: one pooled ``request`` and ``aclose``.

    Engines are built with ``max_connections``, ``timeout`` (the default per request),
    default ``headers`` and :class:`Limits`; ``request`` sends one :class:`Request` and
    reads the whole decoded body within ``request.timeout``.
    """

    name: str

    async def request(self, request: Request) -> Response:
        """Send one request and read the whole body; raise leadperf's ScrapeError kinds."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


def make_engine(
    name: str,
    *,
    max_connections: int,
    timeout: float,
    headers: Mapping[str, str] | None,
    limits: Limits = DEFAULT_LIMITS,
    proxy: str | None = None,
    trust_env: bool = True,
    cookies: bool = False,
    allow_private_networks: bool = True,
) -> Engine:
    """Build the engine called ``name`` (``"aiohttp"``, ``"httpx"`` or ``"native"``).

    Args:
        name: the engine.
        max_connections: open connections at most, over every host.
        timeout: seconds for a whole request when the request does not say.
        headers: sent with every request.
        limits: response limits, enforced on every request.
        proxy: one proxy for every request that names none (``http://``, ``https://``;
            ``socks5://`` on aiohttp with ``leadperf[socks]``).
        trust_env: honour ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` from the environment.
        cookies: keep a cookie jar (off: every request stands alone).
        allow_private_networks: False: the aiohttp engine's resolver also refuses private
            addresses at connect time (the scraper checks every hop before sending).

    Raises:
        ConfigError: an unknown engine, or an option the engine cannot honour (the native
            engine has no proxy support and no cookie jar: asking for them, or leaving
            ``trust_env`` on while the environment sets a proxy, is refused rather than
            silently bypassed).
    """
    # Over 60 lines only for its Args docstring and one plain branch per engine.
    if name == "native":
        check_native_options(proxy=proxy, trust_env=trust_env, cookies=cookies)
        from ._native import NativeEngine

        return NativeEngine(
            max_connections=max_connections, timeout=timeout, headers=headers, limits=limits
        )
    if name == "aiohttp":
        from ._aiohttp import AiohttpEngine

        return AiohttpEngine(
            max_connections=max_connections,
            timeout=timeout,
            headers=headers,
            limits=limits,
            proxy=proxy,
            trust_env=trust_env,
            cookies=cookies,
            allow_private_networks=allow_private_networks,
        )
    if name == "httpx":
        from ._httpx import HttpxEngine

        return HttpxEngine(
            max_connections=max_connections,
            timeout=timeout,
            headers=headers,
            limits=limits,
            proxy=proxy,
            trust_env=trust_env,
            cookies=cookies,
        )
    raise ConfigError(f"engine: must be one of {', '.join(ENGINES)}, got {name!r}", key="engine")


def check_native_options(*, proxy: str | None, trust_env: bool, cookies: bool) -> None:
    """Refuse options the native engine cannot honour, naming what to change."""
    if proxy:
        raise ConfigError(
            "engine: 'native' does not support proxies; use engine='aiohttp' (the default) "
            "or engine='httpx' with proxy=/proxies=",
            key="proxy",
        )
    if cookies:
        raise ConfigError(
            "engine: 'native' has no cookie jar; use engine='aiohttp' (the default) or "
            "engine='httpx' with cookies=True",
            key="cookies",
        )
    if trust_env and env_proxies():
        names = ", ".join(sorted(f"{k.upper()}_PROXY" for k in env_proxies()))
        raise ConfigError(
            f"engine: 'native' cannot use the proxy the environment sets ({names}); use "
            "engine='aiohttp' (the default), or pass trust_env=False to connect directly",
            key="trust_env",
        )
