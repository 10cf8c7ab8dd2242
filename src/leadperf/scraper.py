"""Async scraper: per-platform limits, adaptive politeness, retries, batches of any size.

>>> async with AsyncScraper(max_concurrent=5) as scraper:          # doctest: +SKIP
...     results = await scraper.scrape_batch(urls)                  # one result per URL, in order
...     async for result in scraper.scrape_iter(more_urls):         # as they complete
...         ...

A *platform* is a URL's host (with its port when it is not the scheme's default) unless
``platform_of(url)`` says otherwise. At most ``max_concurrent`` requests are in flight
per platform and ``max_connections`` overall; ``delay_seconds`` spaces requests to one
platform. A 429 or 503, a ``Retry-After`` header or a run of timeouts slows that platform
down (and only that one); steady success speeds it back up. Failures are results with the
error recorded, never exceptions that lose the rest of a batch.

The default engine is leadperf's own HTTP/1.1 client (``"native"``, asyncio only);
``engine="aiohttp"`` selects ``aiohttp.ClientSession`` and ``engine="httpx"``
``httpx.AsyncClient`` (which also runs on trio). Whatever the engine,
``scrape_func(client, url)`` gets an httpx-style :class:`ScrapeClient` and results carry
:class:`httpx.Headers`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import random
import re
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sized,
)
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias
from urllib.parse import urlencode, urlsplit

import anyio
import attrs
import httpx

from ._portal import run_sync
from ._scrape._engine import ENGINES, Engine, Response, decode, make_engine
from ._scrape._platform import Platform, parse_retry_after, platform_key
from ._scrape._run import Job, Run
from ._util import mask_url, require
from .config import Settings
from .errors import (
    CacheError,
    ClosedError,
    ConfigError,
    HTTPStatusError,
    InvalidURLError,
    LeadperfError,
    ScrapeConnectionError,
    ScrapeError,
    ScrapeTimeoutError,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

_log = logging.getLogger("leadperf.scraper")

__all__ = [
    "AsyncScraper",
    "PlatformLimits",
    "PlatformStats",
    "Response",
    "RetryPolicy",
    "ScrapeClient",
    "ScrapeFunc",
    "ScrapeResult",
    "ScraperStats",
]

ScrapeFunc: TypeAlias = Callable[["ScrapeClient", str], Awaitable[Any]]
Progress: TypeAlias = bool | Callable[[int, int | None], object] | None

#: Statuses retried by default: timeouts, throttling and every server error.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})
#: Exceptions retried by default.
DEFAULT_RETRY_ERRORS: frozenset[type[BaseException]] = frozenset(
    {ScrapeConnectionError, ScrapeTimeoutError}
)
_THROTTLE_STATUSES = (429, 503)
#: Latencies kept for the percentiles in :meth:`AsyncScraper.stats`.
_LATENCY_WINDOW = 10_000
#: Tracked platforms above which idle ones are forgotten (bounded memory on many hosts).
_MAX_IDLE_PLATFORMS = 1_000
_MAX_KEY_LENGTH = 200


# -- retry policy -------------------------------------------------------------------------


def _retry_on_converter(value: Iterable[int | type[BaseException]]) -> frozenset[Any]:
    return frozenset(value)


def _check_retry_on(inst: Any, attribute: attrs.Attribute[Any], value: frozenset[Any]) -> None:
    for item in value:
        is_status = isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599
        is_error = isinstance(item, type) and issubclass(item, BaseException)
        if not (is_status or is_error):
            raise ConfigError(
                f"retry_on: items must be HTTP status codes (100-599) or exception classes, "
                f"got {item!r}",
                key="retry_on",
            )


def _number(minimum: float, *, strict: bool = False, integer: bool = False) -> Any:
    def validate(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok_type = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
        ok = ok_type and (value > minimum if strict else value >= minimum)
        if not ok:
            kind = "an integer" if integer else "a number"
            op = ">" if strict else ">="
            raise ConfigError(
                f"{attribute.name}: must be {kind} {op} {minimum}, got {value!r}",
                key=attribute.name,
            )

    return validate


def _retry_on_repr(value: frozenset[Any]) -> str:
    statuses = sorted(v for v in value if isinstance(v, int))
    errors = sorted(v.__name__ for v in value if isinstance(v, type))
    if set(range(500, 600)) <= set(statuses):
        statuses = [s for s in statuses if s < 500 or s > 599]
        shown = [*map(str, statuses), "5xx", *errors]
    else:
        shown = [*map(str, statuses), *errors]
    return "{" + ", ".join(shown) + "}"


@attrs.frozen
class RetryPolicy:
    """How failed requests are retried: exponential backoff with jitter, capped.

    ``attempts`` counts the first try (1 = never retry). The delay before retry *n* is
    ``backoff * 2 ** (n - 1)`` seconds, at most ``max_backoff``, scaled into
    ``[50%, 100%]`` when ``jitter``. ``retry_on`` holds HTTP status codes and exception
    classes; by default connection errors, timeouts, 408, 429 and every 5xx (never any
    other 4xx). A ``Retry-After`` header wins over the computed delay; one longer than
    ``max_retry_after`` seconds is not waited for (the result records the error).
    Bad values raise :class:`ConfigError` naming the field.
    """

    attempts: int = attrs.field(default=3, validator=_number(1, integer=True))
    backoff: float = attrs.field(default=0.5, validator=_number(0))
    max_backoff: float = attrs.field(default=30.0, validator=_number(0))
    jitter: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    retry_on: frozenset[int | type[BaseException]] = attrs.field(
        default=DEFAULT_RETRY_STATUSES | DEFAULT_RETRY_ERRORS,
        converter=_retry_on_converter,
        validator=_check_retry_on,
        repr=_retry_on_repr,
    )
    max_retry_after: float = attrs.field(default=300.0, validator=_number(0))

    def evolve(self, **changes: Any) -> RetryPolicy:
        """Return a copy with ``changes`` (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    def should_retry(self, error: BaseException) -> bool:
        """True when ``error`` (a failed attempt) is retryable under this policy."""
        if isinstance(error, HTTPStatusError):
            return error.status_code in self.retry_on
        return any(isinstance(item, type) and isinstance(error, item) for item in self.retry_on)

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A pure function: ``retry_after`` (seconds, from the server) wins when given;
        ``rand`` is injectable for tests.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        computed = min(self.max_backoff, self.backoff * 2.0 ** max(0, attempt - 1))
        if self.jitter:
            computed *= 0.5 + rand() / 2.0
        return computed


@attrs.frozen
class PlatformLimits:
    """Politeness settings for one platform, overriding the scraper's defaults.

    ``max_concurrent``: requests in flight at once (None: the scraper's
    ``max_concurrent``). ``delay``: minimum seconds between request starts, on top of any
    batch's ``delay_seconds`` (the larger wins). Bad values raise :class:`ConfigError`.
    """

    max_concurrent: int | None = attrs.field(default=None)
    delay: float = attrs.field(default=0.0, validator=_number(0))

    @max_concurrent.validator
    def _check_max_concurrent(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            _number(1, integer=True)(self, attribute, value)

    def evolve(self, **changes: Any) -> PlatformLimits:
        """Return a copy with ``changes`` (validated like the constructor)."""
        return attrs.evolve(self, **changes)


# -- results and stats --------------------------------------------------------------------


def _result_repr(result: ScrapeResult) -> str:
    state = "ok" if result.ok else f"error={type(result.error).__name__}"
    return (
        f"ScrapeResult(url={mask_url(result.url)!r}, status_code={result.status_code}, "
        f"{len(result.content)} bytes, attempts={result.attempts}, "
        f"from_cache={result.from_cache}, {state})"
    )


@attrs.frozen(repr=False)
class ScrapeResult:
    """The outcome of one URL: the response (or the error) and how it was obtained.

    ``status_code`` is None when no response arrived. ``elapsed`` is the last attempt's
    wall time in seconds; ``attempts`` counts tries (0 for a cache hit). ``value`` is what
    ``scrape_func`` returned. A final status >= 400 is recorded as an
    :class:`HTTPStatusError` in ``error`` (the body is kept).
    """

    url: str
    status_code: int | None = None
    content: bytes = b""
    headers: httpx.Headers = attrs.field(factory=httpx.Headers, eq=False)
    elapsed: float = 0.0
    attempts: int = 0
    error: Exception | None = None
    from_cache: bool = False
    value: Any = None

    @property
    def ok(self) -> bool:
        """True when the URL was fetched (and ``scrape_func`` ran) without error."""
        return self.error is None

    @property
    def text(self) -> str:
        """The body decoded by the ``Content-Type`` charset (utf-8 by default)."""
        return decode(self.content, self.headers)

    def json(self, **kwargs: Any) -> Any:
        """Parse the body as JSON."""
        return Response(self.status_code or 0, self.content, self.headers, self.url).json(**kwargs)

    def raise_for_error(self) -> ScrapeResult:
        """Raise the recorded error, if any; return ``self`` otherwise."""
        if self.error is not None:
            raise self.error
        return self

    __repr__ = _result_repr


@attrs.frozen
class PlatformStats:
    """One platform's current state: slots in use, its (possibly reduced) limit, spacing.

    ``delay`` is the adaptive spacing in seconds (0 when not slowed down), ``min_delay``
    the configured one (:class:`PlatformLimits`);
    ``blocked_for`` the seconds left before ``Retry-After`` allows the next request.
    """

    name: str
    in_flight: int
    limit: int
    max_limit: int
    delay: float
    min_delay: float
    blocked_for: float
    requests: int
    throttles: int


@attrs.frozen
class ScraperStats:
    """A snapshot of the scraper's counters (stable field names, for the monitor).

    ``requests`` counts requests sent (retries included), ``rate_limited`` the responses
    that slowed a platform down (429, 503 or ``Retry-After``), ``retries`` the retried
    attempts, ``results`` the results produced and ``errors`` the failed results by error
    kind. Latency percentiles are seconds over the last 10,000 requests; ``throughput`` is
    requests per second over that window.
    """

    engine: str
    requests: int
    rate_limited: int
    retries: int
    results: int
    failed: int
    errors: dict[str, int]
    status_codes: dict[int, int]
    cache_hits: int
    deduplicated: int
    in_flight: int
    platforms: dict[str, PlatformStats]
    latency_p50: float
    latency_p95: float
    latency_p99: float
    throughput: float


class _Counters:
    """The scraper's mutable counters; :meth:`AsyncScraper.stats` copies them."""

    __slots__ = (
        "cache_hits",
        "deduplicated",
        "errors",
        "failed",
        "finished",
        "in_flight",
        "latencies",
        "rate_limited",
        "requests",
        "results",
        "retries",
        "status_codes",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.retries = 0
        self.results = 0
        self.failed = 0
        self.cache_hits = 0
        self.deduplicated = 0
        self.in_flight = 0
        self.errors: dict[str, int] = {}
        self.status_codes: dict[int, int] = {}
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.finished: deque[float] = deque(maxlen=_LATENCY_WINDOW)


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the client handed to scrape_func -----------------------------------------------------


class ScrapeClient:
    """The httpx-style client a ``scrape_func`` receives.

    Requests go through the scraper's engine, stats and adaptive politeness, within the
    platform slot of the URL being scraped. Errors are leadperf's
    (:class:`ScrapeTimeoutError`, :class:`ScrapeConnectionError`, :class:`HTTPStatusError`
    from ``raise_for_status()``), so the scraper's retry policy applies to them.
    """

    __slots__ = ("_platform", "_scraper", "last_response")

    def __init__(self, scraper: AsyncScraper, platform: Platform) -> None:
        self._scraper = scraper
        self._platform = platform
        #: The last response this client received (None before the first).
        self.last_response: Response | None = None

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
        """Send a request and return its :class:`Response` (GETs use the cache, if any)."""
        kwargs = _request_kwargs(params, headers, content, data, json, timeout, follow_redirects)
        response = await self._scraper._request(self._platform, method, url, kwargs)
        self.last_response = response
        return response

    async def get(self, url: str, **kwargs: Any) -> Response:
        """``request("GET", url, ...)``."""
        return await self.request("GET", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> Response:
        """``request("HEAD", url, ...)``."""
        return await self.request("HEAD", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        """``request("POST", url, ...)``."""
        return await self.request("POST", url, **kwargs)


def _request_kwargs(
    params: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None,
    content: bytes | str | None,
    data: Mapping[str, Any] | None,
    json: Any,
    timeout: float | None,
    follow_redirects: bool,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if params is not None:
        kwargs["params"] = params
    if headers is not None:
        kwargs["headers"] = headers
    if content is not None:
        kwargs["content"] = content
    if data is not None:
        kwargs["data"] = data
    if json is not None:
        kwargs["json"] = json
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"timeout: must be a number > 0, got {timeout!r}", key="timeout")
        kwargs["timeout"] = float(timeout)
    if not follow_redirects:
        kwargs["follow_redirects"] = False
    return kwargs


# -- cache --------------------------------------------------------------------------------


class _CacheLike(Protocol):
    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> Any: ...


class _Pending:
    """A request in flight that identical requests wait for instead of sending their own."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: ScrapeResult | None = None


def _cache_key(method: str, url: str, params: Mapping[str, Any] | None) -> str:
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(sorted(params.items()), doseq=True)}"
    key = f"scrape:{method} {url}"
    if len(key) > _MAX_KEY_LENGTH:
        key = f"scrape:{method} sha256:{hashlib.sha256(url.encode()).hexdigest()}"
    return key


def _cacheable(method: str, kwargs: Mapping[str, Any]) -> bool:
    return method == "GET" and not ({"content", "data", "json"} & kwargs.keys())


def _encode_response(response: Response) -> dict[str, Any]:
    return {
        "status_code": response.status_code,
        "content": response.content,
        "headers": [[k, v] for k, v in response.headers.multi_items()],
        "url": response.url,
    }


def _decode_response(value: Any, url: str) -> Response | None:
    try:
        return Response(
            int(value["status_code"]),
            bytes(value["content"]),
            httpx.Headers([(str(k), str(v)) for k, v in value["headers"]]),
            str(value.get("url", url)),
            from_cache=True,
        )
    except (TypeError, KeyError, ValueError, AttributeError):
        return None  # an entry this version cannot read: fetch again


# -- URLs ---------------------------------------------------------------------------------


#: A plain ``host[:port]``: URLs starting ``http(s)://`` + this skip ``urlsplit`` (same answer).
_PLAIN_NETLOC = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*(?::[0-9]{1,5})?")


def _check_url(url: object) -> tuple[str, str] | InvalidURLError:
    """``(scheme, netloc)`` of an absolute http(s) URL, or the error saying what is wrong."""
    # The bulk case, several times cheaper than urlsplit; anything unusual falls through.
    if type(url) is str:
        if url.startswith("https://"):
            scheme, start = "https", 8
        elif url.startswith("http://"):
            scheme, start = "http", 7
        else:
            scheme, start = "", 0
        if start:
            match = _PLAIN_NETLOC.match(url, start)
            if match is not None:
                end = match.end()
                if end == len(url) or url[end] in "/?#":
                    return scheme, match.group()
    if not isinstance(url, str):
        return InvalidURLError(
            f"URL must be a str, got {type(url).__name__}; pass absolute http(s) URLs",
            url=repr(url),
        )
    if not url.strip():
        return InvalidURLError("URL is empty; pass absolute http(s) URLs", url=url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return InvalidURLError(f"{mask_url(url)!r} is not a valid URL ({exc})", url=url)
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        return InvalidURLError(
            f"{mask_url(url)!r} has no scheme or host; write it as http://host/... or "
            "https://host/...",
            url=url,
        )
    if scheme not in ("http", "https"):
        return InvalidURLError(
            f"{mask_url(url)!r} has unsupported scheme {scheme!r}; only http and https are scraped",
            url=url,
        )
    host = parts.netloc.rpartition("@")[2]
    if not host or host.startswith(":"):
        return InvalidURLError(f"{mask_url(url)!r} has no host", url=url)
    return scheme, parts.netloc


def _error_kind(error: BaseException) -> str:
    return type(error).__name__


# -- the scraper --------------------------------------------------------------------------


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be an integer > 0, got {value!r}", key=name)
    return value


def _check_number(name: str, value: Any, *, strict: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or (value <= 0 if strict else value < 0) or value != value:
        op = ">" if strict else ">="
        raise ConfigError(f"{name}: must be a number {op} 0, got {value!r}", key=name)
    return float(value)


_Owner: TypeAlias = Literal["async", "portal"]


class AsyncScraper:
    """Fetch many URLs fast and politely over one pooled HTTP engine.

    Arguments left as None come from ``settings`` (``Settings.from_env()`` by default):
    ``max_concurrent`` (per platform, ``ASYNC_MAX_CONCURRENT``, 5), ``timeout`` (seconds
    per request, ``ASYNC_TIMEOUT``, 30), ``max_connections`` (overall,
    ``ASYNC_MAX_CONNECTIONS``, 100) and ``engine`` (``"native"``, the default, or
    ``"aiohttp"``, both asyncio only, or ``"httpx"``). ``retry`` is a
    :class:`RetryPolicy`; ``cache`` any object with leadperf's async ``get``/``set`` (GET
    responses cached for ``cache_ttl`` seconds, default ``settings.cache.default_ttl``);
    ``platform_of(url)`` maps a URL to its platform name;
    ``headers`` are sent with every request; ``limits`` maps platform names to
    :class:`PlatformLimits` (or an int: that platform's ``max_concurrent``). Bad
    arguments raise :class:`ConfigError`.

    Use it as ``async with AsyncScraper() as scraper:`` (or ``with`` for the ``*_sync``
    methods). A closed scraper raises :class:`ClosedError`.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        timeout: float | None = None,
        max_connections: int | None = None,
        retry: RetryPolicy | None = None,
        cache: _CacheLike | None = None,
        platform_of: Callable[[str], str] | None = None,
        engine: str | None = None,
        *,
        settings: Settings | None = None,
        headers: Mapping[str, str] | None = None,
        cache_ttl: float | None = None,
        limits: Mapping[str, PlatformLimits | int] | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        conf = settings.scraper
        self.max_concurrent = _check_int(
            "max_concurrent", conf.max_concurrent if max_concurrent is None else max_concurrent
        )
        self.timeout = _check_number(
            "timeout", conf.timeout if timeout is None else timeout, strict=True
        )
        self.max_connections = _check_int(
            "max_connections", conf.max_connections if max_connections is None else max_connections
        )
        retry = RetryPolicy() if retry is None else retry
        if not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry: must be a RetryPolicy, got {retry!r}", key="retry")
        self.retry = retry
        if cache is not None and not (
            callable(getattr(cache, "get", None)) and callable(getattr(cache, "set", None))
        ):
            raise ConfigError(
                "cache: must be a leadperf cache (async get/set), "
                "e.g. leadperf.cache.MemoryCache()",
                key="cache",
            )
        self._cache = cache
        self.cache_ttl = _check_number(
            "cache_ttl", settings.cache.default_ttl if cache_ttl is None else cache_ttl, strict=True
        )
        if platform_of is not None and not callable(platform_of):
            raise ConfigError(
                f"platform_of: must be a callable url -> platform name, got {platform_of!r}",
                key="platform_of",
            )
        self._platform_of = platform_of
        engine = conf.engine if engine is None else engine
        if engine not in ENGINES:
            raise ConfigError(
                f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}", key="engine"
            )
        self.engine_name: str = engine
        if headers is not None and not isinstance(headers, Mapping):
            raise ConfigError(f"headers: must be a mapping, got {headers!r}", key="headers")
        self._headers = dict(headers) if headers else None
        self._limits: dict[str, PlatformLimits] = {}
        if limits is not None:
            if not isinstance(limits, Mapping):
                raise ConfigError(
                    f"limits: must be a mapping of platform name to PlatformLimits, got {limits!r}",
                    key="limits",
                )
            for name, value in limits.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    value = PlatformLimits(max_concurrent=value)
                if not isinstance(value, PlatformLimits):
                    raise ConfigError(
                        f"limits[{name!r}]: must be a PlatformLimits or an int, got {value!r}",
                        key="limits",
                    )
                self._limits[name] = value

        self._engine: Engine | None = None
        self._engine_timeout = self.timeout
        self._owner: _Owner | None = None
        self._borrowers = 0
        self._borrowed = False
        self._closed = False
        self._tg: TaskGroup | None = None
        self._iterations: set[anyio.CancelScope] = set()
        self._tg_task = 0
        self._platforms: dict[str, Platform] = {}
        self._prune_at = _MAX_IDLE_PLATFORMS
        self._inflight: dict[str, _Pending] = {}
        self._counters = _Counters()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._engine else "idle")
        return (
            f"<AsyncScraper engine={self.engine_name} max_concurrent={self.max_concurrent} "
            f"max_connections={self.max_connections} {state}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran; a closed scraper is never reopened."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this AsyncScraper is closed; create a new one")

    def _open_engine(self, owner: _Owner) -> Engine:
        self._check_open()
        if self._engine is None:
            self._engine = make_engine(
                self.engine_name,
                max_connections=self.max_connections,
                timeout=self.timeout,
                headers=self._headers,
            )
            self._engine_timeout = self.timeout
            self._owner = owner
        return self._engine

    def _ensure_open(self) -> None:
        if self._engine is None:
            self._open_engine("async")
        else:
            self._check_open()

    async def __aenter__(self) -> AsyncScraper:
        self._check_open()
        if self._tg is not None:
            raise LeadperfError("this AsyncScraper is already entered; enter it once")
        self._open_engine("async")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._tg_task = anyio.get_current_task().id
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                self._stop_iterations()  # a scrape_iter left unfinished
                # A task group is left by the task that entered it; exited from another
                # task (a misused lifecycle) the stopped iterations just end on their own.
                if anyio.get_current_task().id == self._tg_task:
                    await tg.__aexit__(None, None, None)
        finally:
            await self.close()

    def _stop_iterations(self) -> None:
        # Only the iterations' own scopes: the group's scope also covers the caller's code.
        for scope in list(self._iterations):
            scope.cancel()

    async def close(self) -> None:
        """Stop background iterations and close every connection. Idempotent."""
        self._closed = True
        self._stop_iterations()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    aclose = close

    def __enter__(self) -> AsyncScraper:
        self._check_open()
        if self._engine is not None:
            raise LeadperfError("this AsyncScraper is already open; enter it once")
        run_sync(self._open_on_portal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        """Blocking :meth:`close`."""
        if self._owner == "portal" or self._engine is None:
            run_sync(self.close)
        else:
            raise LeadperfError(
                "this AsyncScraper was opened on an event loop; use 'await scraper.close()'"
            )

    async def _open_on_portal(self) -> None:
        self._open_engine("portal")

    def apply_settings(self, settings: Settings) -> None:
        """Adopt ``settings.scraper``'s ``max_concurrent`` and ``timeout`` live.

        Platforms with their own :class:`PlatformLimits` keep them; ``max_connections`` and
        ``engine`` take effect the next time a scraper is built.
        """
        conf = settings.scraper
        self.max_concurrent = conf.max_concurrent
        self.timeout = conf.timeout
        for key, platform in self._platforms.items():
            own = self._limits.get(key)
            if own is None or own.max_concurrent is None:
                platform.set_max_limit(conf.max_concurrent)

    # -- platforms ------------------------------------------------------------------------

    def _platform(self, url: str, scheme: str, netloc: str) -> Platform:
        key = platform_key(scheme, netloc) if self._platform_of is None else self._platform_of(url)
        platform = self._platforms.get(key)
        if platform is None:
            if len(self._platforms) >= self._prune_at:
                self._forget_idle_platforms()
            platform = self._platforms[key] = self._new_platform(str(key))
        return platform

    def _new_platform(self, key: str) -> Platform:
        limits = self._limits.get(key)
        if limits is None:
            return Platform(key, self.max_concurrent)
        return Platform(key, limits.max_concurrent or self.max_concurrent, limits.delay)

    def _forget_idle_platforms(self) -> None:
        # A platform with queued jobs is never idle, so one host never gets two limiters.
        for key in [k for k, p in self._platforms.items() if p.idle]:
            del self._platforms[key]
        # Amortised: with many busy platforms, prune again only after the map doubles.
        self._prune_at = max(_MAX_IDLE_PLATFORMS, 2 * len(self._platforms))

    def _job(self, index: int, url: object) -> Job[ScrapeResult]:
        checked = _check_url(url)
        if isinstance(checked, InvalidURLError):
            return Job(index, url, None, self._failed(checked))
        try:
            platform = self._platform(url, *checked)  # type: ignore[arg-type]
        except Exception as exc:  # a user's platform_of failed: that URL fails, not the batch
            return Job(index, url, None, self._failed(exc, str(url)))
        platform.pending += 1
        return Job(index, url, platform, None)

    def _failed(self, error: Exception, url: str | None = None) -> ScrapeResult:
        if url is None:
            url = error.url if isinstance(error, ScrapeError) and error.url else ""
        return ScrapeResult(url=url, error=error)

    # -- requests -------------------------------------------------------------------------

    async def _request(
        self, platform: Platform, method: str, url: str, kwargs: dict[str, Any]
    ) -> Response:
        """One request on the wire (or from the cache), with stats and politeness feedback."""
        cache = self._cache
        key = None
        if cache is not None and _cacheable(method, kwargs):
            key = _cache_key(method, url, kwargs.get("params"))
            hit = await self._cache_get(key, url)
            if hit is not None:
                return hit
        response = await self._send(platform, method, url, kwargs)
        if key is not None and 200 <= response.status_code < 300:
            await self._cache_set(key, response)
        return response

    async def _send(
        self, platform: Platform, method: str, url: str, kwargs: dict[str, Any]
    ) -> Response:
        engine = self._engine
        if engine is None:
            raise ClosedError("this AsyncScraper is closed; create a new one")
        counters = self._counters
        counters.requests += 1
        counters.in_flight += 1
        if self.timeout != self._engine_timeout and "timeout" not in kwargs:
            kwargs = {**kwargs, "timeout": self.timeout}  # changed live by apply_settings
        try:
            response = await engine.request(method, url, **kwargs)
        except ScrapeTimeoutError:
            platform.on_timeout(time.monotonic())
            raise
        finally:
            counters.in_flight -= 1
        counters.latencies.append(response.elapsed)  # the engine times the request itself
        counters.finished.append(time.perf_counter())
        status = response.status_code
        codes = counters.status_codes
        codes[status] = codes.get(status, 0) + 1
        if status >= 400:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None or status in _THROTTLE_STATUSES:
                counters.rate_limited += 1
                if retry_after is not None:
                    retry_after = min(retry_after, self.retry.max_retry_after)
                platform.on_throttle(time.monotonic(), retry_after)
                if _log.isEnabledFor(logging.INFO):
                    _log.info(
                        "platform %s answered %d: slowed to %d in flight, %.2f s apart%s",
                        platform.key,
                        status,
                        platform.limit,
                        platform.adaptive_delay,
                        "" if retry_after is None else f", paused {retry_after:.1f} s",
                    )
                return response
            if status >= 500:
                return response
        platform.on_success()
        return response

    async def _cache_get(self, key: str, url: str) -> Response | None:
        assert self._cache is not None
        try:
            value = await self._cache.get(key)
        except CacheError:
            self._count_error("CacheError")
            return None
        if value is None:
            return None
        response = _decode_response(value, url)
        if response is not None:
            self._counters.cache_hits += 1
        return response

    async def _cache_set(self, key: str, response: Response) -> None:
        assert self._cache is not None
        try:
            await self._cache.set(key, _encode_response(response), ttl=self.cache_ttl)
        except CacheError:
            self._count_error("CacheError")

    def _count_error(self, kind: str) -> None:
        errors = self._counters.errors
        errors[kind] = errors.get(kind, 0) + 1

    async def _process(
        self,
        url: str,
        platform: Platform,
        scrape_func: ScrapeFunc | None,
        delay: float,
        method: str = "GET",
        kwargs: dict[str, Any] | None = None,
    ) -> ScrapeResult:
        """One URL to one result (cache, in-flight dedup, retries); the slot is held."""
        kwargs = {} if kwargs is None else kwargs
        if self._cache is None or scrape_func is not None or not _cacheable(method, kwargs):
            result = await self._attempts(url, platform, scrape_func, delay, method, kwargs)
            return self._finish(result)
        key = _cache_key(method, url, kwargs.get("params"))
        while True:
            hit = await self._cache_get(key, url)
            if hit is not None:
                return self._finish(_result_of(url, hit, None, 0, None, from_cache=True))
            pending = self._inflight.get(key)
            if pending is None:
                break
            await pending.event.wait()
            if pending.result is not None:
                self._counters.deduplicated += 1
                shared = attrs.evolve(pending.result, url=url, attempts=0, from_cache=True)
                return self._finish(shared)
            # the request we waited for was cancelled: look again
        pending = self._inflight[key] = _Pending()
        try:
            result = await self._attempts(url, platform, None, delay, method, kwargs, cache=False)
            if result.error is None and result.status_code and 200 <= result.status_code < 300:
                await self._cache_set(key, _response_of(result))
            pending.result = result
        finally:
            del self._inflight[key]
            pending.event.set()
        return self._finish(result)

    def _finish(self, result: ScrapeResult) -> ScrapeResult:
        counters = self._counters
        counters.results += 1
        if result.error is not None:
            counters.failed += 1
            self._count_error(_error_kind(result.error))
        return result

    async def _attempts(
        self,
        url: str,
        platform: Platform,
        scrape_func: ScrapeFunc | None,
        delay: float,
        method: str,
        kwargs: dict[str, Any],
        *,
        cache: bool = True,
    ) -> ScrapeResult:
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            wait = platform.reserve(delay, time.monotonic())
            if wait > 0:
                await anyio.sleep(wait)
            response: Response | None = None
            value: Any = None
            error: Exception | None = None
            if scrape_func is None:
                try:
                    if cache and self._cache is not None:
                        response = await self._request(platform, method, url, kwargs)
                    else:
                        response = await self._send(platform, method, url, kwargs)
                except ScrapeError as exc:
                    error = exc
                else:
                    if response.status_code >= 400:
                        error = HTTPStatusError(
                            f"{mask_url(url)} answered HTTP {response.status_code}"
                            + (f" after {attempt} attempts" if attempt > 1 else ""),
                            url=url,
                            status_code=response.status_code,
                        )
            else:
                client = ScrapeClient(self, platform)
                try:
                    value = await scrape_func(client, url)
                except Exception as exc:  # the user's code failed: record it on the result
                    error = exc
                response = client.last_response
            if error is None:
                return _result_of(url, response, value, attempt, None)
            if isinstance(error, ScrapeError):
                error.attempt = attempt
            if attempt < policy.attempts and policy.should_retry(error):
                retry_after = None
                if response is not None and response.status_code >= 400:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is None or retry_after <= policy.max_retry_after:
                    self._counters.retries += 1
                    pause = policy.delay(attempt, retry_after)
                    if pause > 0:
                        await anyio.sleep(pause)
                    continue
            return _result_of(url, response, value, attempt, error)

    # -- public API -----------------------------------------------------------------------

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> ScrapeResult:
        """Fetch one URL under the platform's limits and the retry policy.

        Never raises for a failed fetch: the result records the error (see
        :meth:`ScrapeResult.raise_for_error`). Raises :class:`ClosedError` when closed.
        """
        self._ensure_open()
        kwargs = _request_kwargs(params, headers, content, data, json, timeout, follow_redirects)
        job = self._job(0, url)
        if job.platform is None:
            assert job.result is not None
            return self._finish(job.result)
        platform = job.platform
        try:
            await _acquire(platform)
            try:
                return await self._process(url, platform, None, 0.0, method.upper(), kwargs)
            finally:
                platform.release()
        finally:
            platform.pending -= 1

    def _prepare(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None,
        delay_seconds: float,
        batch_size: int | None,
        progress: Progress,
    ) -> tuple[Iterator[Job[ScrapeResult]], int | None, int, int, float]:
        if isinstance(urls, str | bytes) or not isinstance(urls, Iterable):
            raise ConfigError(
                f"urls: must be an iterable of URL strings, got {type(urls).__name__}", key="urls"
            )
        if scrape_func is not None and (
            not callable(scrape_func)
            or (inspect.isfunction(scrape_func) and not inspect.iscoroutinefunction(scrape_func))
        ):
            raise ConfigError(
                "scrape_func: must be an async function (client, url) -> value, "
                f"got {scrape_func!r}",
                key="scrape_func",
            )
        delay = _check_number("delay_seconds", delay_seconds, strict=False)
        lookahead = (
            max(1_000, 10 * self.max_connections)
            if batch_size is None
            else _check_int("batch_size", batch_size)
        )
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ConfigError(
                "progress: must be True, False, None or a callable (done, total), "
                f"got {progress!r}",
                key="progress",
            )
        total = len(urls) if isinstance(urls, Sized) else None
        workers = min(self.max_connections, lookahead)
        if total is not None:
            workers = max(1, min(workers, total))
        jobs = (self._job(i, u) for i, u in enumerate(urls))
        return jobs, total, lookahead, workers, delay

    async def scrape_batch(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> list[ScrapeResult]:
        """Fetch every URL; return one :class:`ScrapeResult` per input, in input order.

        ``scrape_func(client, url)``, when given, runs instead of a plain GET, under the
        same limits and retries; its return value lands in ``result.value``.
        ``delay_seconds`` spaces requests to one platform. ``batch_size`` bounds how many
        URLs are read ahead of their results (default ``max(1000, 10 * max_connections)``;
        raise it when the input is sorted by platform). ``progress=True`` shows a tqdm bar
        (``pip install 'leadperf[progress]'``); a callable gets ``(done, total)``.
        Bad arguments raise :class:`ConfigError`; failed URLs never raise.
        """
        self._ensure_open()
        jobs, total, lookahead, workers, delay = self._prepare(
            urls, scrape_func, delay_seconds, batch_size, progress
        )
        results: list[ScrapeResult | None] = []
        tick = _progress(progress, total)

        def emit(job: Job[ScrapeResult], result: ScrapeResult) -> None:
            index = job.index
            if index >= len(results):
                results.extend([None] * (index + 1 - len(results)))
            results[index] = result
            if tick is not None:
                tick(1)

        try:
            await self._run(jobs, scrape_func, delay, emit, lookahead, workers).execute()
        finally:
            if tick is not None:
                tick(0)
        missing = [i for i, r in enumerate(results) if r is None]
        assert not missing, f"results lost for inputs {missing[:10]}"
        return results  # type: ignore[return-value]  # no None left, checked above

    def scrape_iter(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> AsyncIterator[ScrapeResult]:
        """Like :meth:`scrape_batch`, but yield results as they complete (any order).

        Memory stays bounded by ``batch_size`` whatever the number of URLs. Needs the
        scraper entered with ``async with``; leaving the loop early stops the work.
        """
        self._check_open()
        if self._tg is None:
            raise LeadperfError(
                "scrape_iter() needs the scraper entered: 'async with AsyncScraper() as s:'"
            )
        jobs, total, lookahead, workers, delay = self._prepare(
            urls, scrape_func, delay_seconds, batch_size, progress
        )
        return self._iterate(jobs, scrape_func, delay, lookahead, workers, total, progress)

    async def _iterate(
        self,
        jobs: Iterator[Job[ScrapeResult]],
        scrape_func: ScrapeFunc | None,
        delay: float,
        lookahead: int,
        workers: int,
        total: int | None,
        progress: Progress,
    ) -> AsyncIterator[ScrapeResult]:
        assert self._tg is not None
        send, receive = anyio.create_memory_object_stream[ScrapeResult](workers)
        scope = anyio.CancelScope()
        tick = _progress(progress, total)

        def emit(job: Job[ScrapeResult], result: ScrapeResult) -> Awaitable[None] | None:
            try:
                # No checkpoint while the buffer has room: one event-loop pass then
                # delivers many results instead of one (a poll syscall per result).
                send.send_nowait(result)
            except anyio.WouldBlock:
                return emit_waiting(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()  # the consumer left the loop: stop the work
                return None
            if tick is not None:
                tick(1)
            return None

        async def emit_waiting(result: ScrapeResult) -> None:
            try:
                await send.send(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()
                return
            if tick is not None:
                tick(1)

        failures: list[Exception] = []
        finished: list[bool] = []

        async def runner() -> None:
            self._iterations.add(scope)
            try:
                with scope:
                    async with send:
                        run = self._run(jobs, scrape_func, delay, emit, lookahead, workers)
                        await run.execute()
                        finished.append(True)
            except Exception as exc:  # hand it to the consumer, not the scraper's group
                failures.append(exc)
            finally:
                self._iterations.discard(scope)

        self._tg.start_soon(runner)
        try:
            while True:
                # Drain what is buffered without a checkpoint per result (see emit); wait
                # only when the buffer is empty. At most `workers` results are buffered.
                try:
                    result = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        result = await receive.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                yield result
            # Closed mid-iteration: workers may have hit the closed scraper before the
            # cancellation reached them; the cause that matters is the close itself.
            if failures and not (self._closed and not finished):
                raise failures[0]
            if not finished:
                raise ClosedError("the AsyncScraper was closed before scrape_iter() finished")
        finally:
            # Only synchronous calls here: this may run from a garbage collector hook.
            scope.cancel()
            receive.close()
            if tick is not None:
                tick(0)

    def _run(
        self,
        jobs: Iterator[Job[ScrapeResult]],
        scrape_func: ScrapeFunc | None,
        delay: float,
        emit: Callable[[Job[ScrapeResult], ScrapeResult], Awaitable[None] | None],
        lookahead: int,
        workers: int,
    ) -> Run[ScrapeResult]:
        def handle(job: Job[ScrapeResult]) -> Awaitable[ScrapeResult]:
            # Returns _process's coroutine itself: one coroutine object less per URL.
            assert job.platform is not None
            return self._process(job.url, job.platform, scrape_func, delay)

        def emit_counted(job: Job[ScrapeResult], result: ScrapeResult) -> Awaitable[None] | None:
            if job.platform is None:
                self._finish(result)  # rejected up front: counted here, not in _process
            return emit(job, result)

        return Run(jobs, handle=handle, emit=emit_counted, lookahead=lookahead, workers=workers)

    def scrape_batch_sync(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> list[ScrapeResult]:
        """Blocking :meth:`scrape_batch` for scripts and notebooks.

        Opens the engine for the call (and closes it after) when the scraper is not open;
        works inside a running event loop (Jupyter) through leadperf's portal thread.
        """
        self._check_open()
        if self._engine is not None and self._owner != "portal":
            raise LeadperfError(
                "this AsyncScraper is open on an event loop; use 'await scraper.scrape_batch()'"
            )
        call = partial(
            self._scrape_batch_on_portal, urls, scrape_func, delay_seconds, batch_size, progress
        )
        return run_sync(call)

    async def _scrape_batch_on_portal(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None,
        delay_seconds: float,
        batch_size: int | None,
        progress: Progress,
    ) -> list[ScrapeResult]:
        if self._engine is None:
            self._open_engine("portal")
            self._borrowed = True  # opened for these calls only: closed after the last one
        self._borrowers += 1
        try:
            return await self.scrape_batch(urls, scrape_func, delay_seconds, batch_size, progress)
        finally:
            self._borrowers -= 1
            if self._borrowed and self._borrowers == 0:
                self._borrowed = False
                engine, self._engine, self._owner = self._engine, None, None
                if engine is not None:
                    await engine.aclose()

    def fetch_sync(self, url: str) -> ScrapeResult:
        """Blocking GET of one URL (same rules as :meth:`scrape_batch_sync`)."""
        return self.scrape_batch_sync([url])[0]

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> ScraperStats:
        """A frozen snapshot of the counters, latencies and every platform's state."""
        counters = self._counters
        ordered = sorted(counters.latencies)
        finished = counters.finished
        span = finished[-1] - finished[0] if len(finished) > 1 else 0.0
        now = time.monotonic()
        platforms = {
            key: PlatformStats(
                name=key,
                in_flight=p.in_flight,
                limit=p.limit,
                max_limit=p.max_limit,
                delay=p.adaptive_delay,
                min_delay=p.min_delay,
                blocked_for=max(0.0, p.blocked_until - now),
                requests=p.requests,
                throttles=p.throttles,
            )
            for key, p in list(self._platforms.items())
        }
        return ScraperStats(
            engine=self.engine_name,
            requests=counters.requests,
            rate_limited=counters.rate_limited,
            retries=counters.retries,
            results=counters.results,
            failed=counters.failed,
            errors=dict(counters.errors),
            status_codes=dict(counters.status_codes),
            cache_hits=counters.cache_hits,
            deduplicated=counters.deduplicated,
            in_flight=counters.in_flight,
            platforms=platforms,
            latency_p50=_percentile(ordered, 0.50),
            latency_p95=_percentile(ordered, 0.95),
            latency_p99=_percentile(ordered, 0.99),
            throughput=(len(finished) - 1) / span if span > 0 else 0.0,
        )


# -- internals ----------------------------------------------------------------------------


def _result_of(
    url: str,
    response: Response | None,
    value: Any,
    attempts: int,
    error: Exception | None,
    *,
    from_cache: bool = False,
) -> ScrapeResult:
    if response is None:
        return ScrapeResult(url=url, attempts=attempts, error=error, value=value)
    return ScrapeResult(
        url=url,
        status_code=response.status_code,
        content=response.content,
        headers=response.headers,
        elapsed=response.elapsed,
        attempts=attempts,
        error=error,
        from_cache=from_cache,
        value=value,
    )


def _response_of(result: ScrapeResult) -> Response:
    return Response(result.status_code or 0, result.content, result.headers, result.url)


async def _acquire(platform: Platform) -> None:
    """Wait for a slot of ``platform`` (FIFO with every other waiter)."""
    if platform.try_acquire():
        return
    event = anyio.Event()
    state = {"granted": False, "gone": False}

    def grant() -> bool:
        if state["gone"]:
            return False
        state["granted"] = True
        event.set()
        return True

    owner = object()
    platform.add_waiter(owner, grant)
    try:
        await event.wait()
    except BaseException:
        state["gone"] = True
        if state["granted"]:
            platform.release()
        else:
            platform.remove_waiters(owner)
        raise


def _progress(progress: Progress, total: int | None) -> Callable[[int], None] | None:
    """A ``tick(n)`` advancing the progress display by ``n``; ``tick(0)`` finishes it."""
    if progress is None or progress is False:
        return None
    if progress is True:
        tqdm_auto = require("tqdm.auto", "progress", "tqdm")
        bar = tqdm_auto.tqdm(total=total, unit="url")

        def tick_bar(n: int) -> None:
            if n:
                bar.update(n)
            else:
                bar.close()

        return tick_bar
    callback = progress
    done = 0

    def tick_callback(n: int) -> None:
        nonlocal done
        if n:
            done += n
            callback(done, total)

    return tick_callback
