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

The default engine is aiohttp (``aiohttp.ClientSession``: llhttp parser, proxies,
cookies); under trio it is httpx. ``engine="native"`` selects leadperf's own lean
HTTP/1.1 client (asyncio only, no proxies or cookies) and ``engine="httpx"``
``httpx.AsyncClient``. Every engine enforces the same response limits and sends nothing
with control bytes in it. Whatever the engine, ``scrape_func(client, url)`` gets an
httpx-style :class:`ScrapeClient` and results carry :class:`httpx.Headers`.

The parts live in ``leadperf._scrape``, one module per concern: ``_policy`` (retry and
platform policy values), ``_results`` (results and stats), ``_pipeline`` (cache ->
dedup -> retry -> send), ``_urls`` (URL, request and address checks), ``_lifecycle``
(opening, closing and the blocking bridge), ``_batch`` (batches), ``_proxy`` (proxy
rotation) and the engines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from ._core.lazy import publish
from ._core.validate import boolean, non_negative_number, positive_int, positive_number
from ._scrape._batch import Batches, Progress
from ._scrape._client import ScrapeClient, build_request
from ._scrape._engine import ENGINES, Engine, Response
from ._scrape._lifecycle import Lifecycle, Owner
from ._scrape._pipeline import CacheLike, Pipeline, ScrapeFunc, _Pending, acquire_slot
from ._scrape._platform import Platform, platform_key
from ._scrape._policy import PlatformLimits, RetryPolicy
from ._scrape._proxy import ProxyRotation, check_proxy
from ._scrape._request import Limits
from ._scrape._results import (
    Counters,
    PlatformStats,
    ScrapeResult,
    ScraperStats,
    percentile,
)
from ._scrape._run import Job
from ._scrape._shared import SharedDedup, SharedLimiter
from ._scrape._urls import check_headers, check_request, check_url
from ._util import mask_url
from .config import Settings
from .errors import ConfigError, InvalidURLError, ScrapeError

__all__ = [
    "AsyncScraper",
    "Limits",
    "PlatformLimits",
    "PlatformStats",
    "Progress",
    "Response",
    "RetryPolicy",
    "ScrapeClient",
    "ScrapeFunc",
    "ScrapeResult",
    "ScraperStats",
    "SharedDedup",
    "SharedLimiter",
]

#: Tracked platforms above which idle ones are forgotten (bounded memory on many hosts).
_MAX_IDLE_PLATFORMS = 1_000
#: Hosts whose platform key is remembered per scheme (the memo starts over past this).
_MAX_PLATFORM_KEYS = 10_000
_check_url = check_url  # kept for callers of the old private name


def _limits_of(value: Mapping[str, PlatformLimits | int] | None) -> dict[str, PlatformLimits]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"limits: must be a mapping of platform name to PlatformLimits, got {value!r}",
            key="limits",
        )
    out: dict[str, PlatformLimits] = {}
    for name, item in value.items():
        if isinstance(item, int) and not isinstance(item, bool):
            item = PlatformLimits(max_concurrent=item)
        if not isinstance(item, PlatformLimits):
            raise ConfigError(
                f"limits[{name!r}]: must be a PlatformLimits or an int, got {item!r}",
                key="limits",
            )
        out[name] = item
    return out


def _retry_of(value: RetryPolicy | None) -> RetryPolicy:
    retry = RetryPolicy() if value is None else value
    if not isinstance(retry, RetryPolicy):
        raise ConfigError(f"retry: must be a RetryPolicy, got {retry!r}", key="retry")
    return retry


def _protocol(value: Any, name: str, methods: tuple[str, ...], what: str) -> Any:
    if value is not None and not all(callable(getattr(value, m, None)) for m in methods):
        raise ConfigError(f"{name}: must be {what}, got {value!r}", key=name)
    return value


class AsyncScraper(Lifecycle, Pipeline, Batches):
    """Fetch many URLs fast and politely over one pooled HTTP engine.

    Arguments left as None come from ``settings`` (``Settings.from_env()`` by default):
    ``max_concurrent`` (per platform, ``ASYNC_MAX_CONCURRENT``, 5), ``timeout`` (seconds
    for a whole request, decoding included, ``ASYNC_TIMEOUT``, 30), ``max_connections``
    (overall, ``ASYNC_MAX_CONNECTIONS``, 100), ``engine`` (``"aiohttp"``, the default,
    httpx under trio; ``"httpx"``; ``"native"``, opt-in, asyncio only) and
    ``max_body_size`` (decoded bytes per response, 32 MiB). ``retry`` is a
    :class:`RetryPolicy`; ``cache`` any object with leadperf's async ``get``/``set`` (GET
    responses cached for ``cache_ttl`` seconds, default ``settings.cache.default_ttl``);
    ``platform_of(url)`` maps a URL to its platform name; ``headers`` are sent with
    every request; ``limits`` maps platform names to :class:`PlatformLimits` (or an int:
    that platform's ``max_concurrent``); ``response_limits`` is a full :class:`Limits`
    (head size, header count, redirects; ``max_body_size`` wins over its body size).

    ``proxy`` sends every request through one proxy; ``proxies`` rotates over several,
    one per request, benching a failing one for ``proxy_bench_seconds``. ``trust_env``
    honours ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``. ``cookies=True`` keeps a cookie
    jar (per scraper; cookies stay on their domain). ``allow_private_networks=False``
    refuses hosts resolving to loopback, private, link-local or metadata addresses,
    redirects included (for user-supplied URLs). ``limiter`` and ``dedup`` share
    per-platform limits and seen URLs with other workers (see ``leadperf.scale``).
    Bad arguments, and options the engine cannot honour, raise :class:`ConfigError`.

    Use it as ``async with AsyncScraper() as scraper:`` (or ``with`` for the ``*_sync``
    methods). A closed scraper raises :class:`ClosedError`.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        timeout: float | None = None,
        max_connections: int | None = None,
        retry: RetryPolicy | None = None,
        cache: CacheLike | None = None,
        platform_of: Callable[[str], str] | None = None,
        engine: str | None = None,
        *,
        settings: Settings | None = None,
        headers: Mapping[str, str] | None = None,
        cache_ttl: float | None = None,
        limits: Mapping[str, PlatformLimits | int] | None = None,
        proxy: str | None = None,
        proxies: Sequence[str] | None = None,
        proxy_bench_seconds: float = 60.0,
        trust_env: bool | None = None,
        cookies: bool | None = None,
        max_body_size: int | None = None,
        response_limits: Limits | None = None,
        allow_private_networks: bool | None = None,
        limiter: SharedLimiter | None = None,
        dedup: SharedDedup | None = None,
    ) -> None:
        # Over 60 lines only for its 22 arguments: each is checked in one line or a helper.
        settings = settings or Settings.from_env()
        conf = settings.scraper
        self.max_concurrent = positive_int(
            conf.max_concurrent if max_concurrent is None else max_concurrent, "max_concurrent"
        )
        self.timeout = positive_number(
            conf.timeout if timeout is None else timeout, "timeout", finite=False
        )
        self.max_connections = positive_int(
            conf.max_connections if max_connections is None else max_connections, "max_connections"
        )
        self.retry = _retry_of(retry)
        self._cache = _protocol(
            cache, "cache", ("get", "set"), "a leadperf cache (async get/set), e.g. MemoryCache()"
        )
        ttl = settings.cache.default_ttl if cache_ttl is None else cache_ttl
        self.cache_ttl = positive_number(ttl, "cache_ttl", finite=False)
        if platform_of is not None and not callable(platform_of):
            raise ConfigError(
                f"platform_of: must be a callable url -> platform name, got {platform_of!r}",
                key="platform_of",
            )
        self._platform_of = platform_of
        self._engine_choice = engine
        engine = conf.engine if engine is None else engine
        if engine not in ENGINES:
            raise ConfigError(
                f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}", key="engine"
            )
        self.engine_name: str = engine
        if engine != "aiohttp" or conf.engine != "aiohttp":
            self._engine_choice = engine  # chosen on purpose: no fallback under trio
        if headers is not None and not isinstance(headers, Mapping):
            raise ConfigError(f"headers: must be a mapping, got {headers!r}", key="headers")
        if headers:
            check_headers(headers.items())
        self._headers = dict(headers) if headers else None
        self._limits = _limits_of(limits)
        self._configure_transport(
            conf, proxy, proxies, proxy_bench_seconds, trust_env, cookies, allow_private_networks
        )
        self._response_limits = self._response_limits_of(conf, max_body_size, response_limits)
        self._limiter = _protocol(
            limiter, "limiter", ("acquire", "release", "report"), "a SharedLimiter"
        )
        self._dedup = _protocol(dedup, "dedup", ("add_many",), "a SharedDedup")
        self._refuse_engine_options()
        self._init_state()

    def _init_state(self) -> None:
        """The lifecycle and run-time state of a scraper not opened yet."""
        self._engine: Engine | None = None
        self._loop = None
        self._owner: Owner | None = None
        self._borrowers = 0
        self._borrowed = False
        self._tg = None
        self._iterations: set[anyio.CancelScope] = set()
        self._tg_task = 0
        self._platforms: dict[str, Platform] = {}
        self._prune_at = _MAX_IDLE_PLATFORMS
        # platform_key() per scheme and netloc, computed once per host (bounded).
        self._platform_keys: dict[str, dict[str, str]] = {"http": {}, "https": {}}
        self._inflight: dict[str, _Pending] = {}
        self._counters = Counters()

    def _configure_transport(
        self,
        conf: Any,
        proxy: str | None,
        proxies: Sequence[str] | None,
        bench: float,
        trust_env: bool | None,
        cookies: bool | None,
        allow_private: bool | None,
    ) -> None:
        proxy = conf.proxy_url if proxy is None else proxy
        self._proxy = None if proxy is None else check_proxy(proxy)
        if proxies is not None and self._proxy is not None:
            raise ConfigError("proxy and proxies: pass one or the other", key="proxies")
        bench = non_negative_number(bench, "proxy_bench_seconds", finite=False)
        self._proxies = None if proxies is None else ProxyRotation(proxies, bench)
        if self._proxies is not None:
            if self.engine_name == "native":
                from ._scrape._engine import check_native_options

                check_native_options(proxy="rotation", trust_env=False, cookies=False)
            if any(p.startswith("socks") for p in self._proxies.proxies):
                raise ConfigError(
                    "proxies: rotation takes http(s) proxies; a SOCKS proxy goes in proxy=",
                    key="proxies",
                )
        flags = {
            "trust_env": conf.trust_env if trust_env is None else trust_env,
            "cookies": conf.cookies if cookies is None else cookies,
            "allow_private_networks": (
                conf.allow_private_networks if allow_private is None else allow_private
            ),
        }
        for name, value in flags.items():
            boolean(value, name)
        self._trust_env = flags["trust_env"]
        self._cookies = flags["cookies"]
        self._allow_private = flags["allow_private_networks"]

    @staticmethod
    def _response_limits_of(
        conf: Any, max_body_size: int | None, response_limits: Limits | None
    ) -> Limits:
        if response_limits is not None and not isinstance(response_limits, Limits):
            raise ConfigError(
                f"response_limits: must be a Limits, got {response_limits!r}",
                key="response_limits",
            )
        base = response_limits or Limits(
            max_body_size=conf.max_body_size,
            max_head_size=conf.max_head_size,
            max_header_count=conf.max_header_count,
            max_redirects=conf.max_redirects,
        )
        if max_body_size is not None:
            base = Limits(
                max_body_size=positive_int(max_body_size, "max_body_size"),
                max_head_size=base.max_head_size,
                max_header_count=base.max_header_count,
                max_redirects=base.max_redirects,
            )
        return base

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("open" if self._engine else "idle")
        proxy = f" proxy={mask_url(self._proxy)}" if self._proxy else ""
        if self._proxies is not None:
            proxy = f" proxies={len(self._proxies.proxies)}"
        return (
            f"<AsyncScraper engine={self.engine_name} max_concurrent={self.max_concurrent} "
            f"max_connections={self.max_connections}{proxy} {state}>"
        )

    @property
    def response_limits(self) -> Limits:
        """The response limits every request is held to."""
        return self._response_limits

    def apply_settings(self, settings: Settings) -> None:
        """Adopt ``settings.scraper``'s ``max_concurrent`` and ``timeout`` live.

        Platforms with their own :class:`PlatformLimits` keep them; ``max_connections``,
        ``engine``, proxies, cookies and response limits take effect the next time a
        scraper is built.
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
        if self._platform_of is None:
            keys = self._platform_keys[scheme]
            key = keys.get(netloc)
            if key is None:
                if len(keys) >= _MAX_PLATFORM_KEYS:
                    keys.clear()
                key = keys[netloc] = platform_key(scheme, netloc)
        else:
            key = self._platform_of(url)
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
        return Platform(
            key,
            limits.max_concurrent or self.max_concurrent,
            limits.delay,
            adaptive=limits.adaptive,
        )

    def _forget_idle_platforms(self) -> None:
        # A platform with queued jobs is never idle, so one host never gets two limiters.
        for key in [k for k, p in self._platforms.items() if p.idle]:
            del self._platforms[key]
        # Amortised: with many busy platforms, prune again only after the map doubles.
        self._prune_at = max(_MAX_IDLE_PLATFORMS, 2 * len(self._platforms))

    def _job(self, index: int, url: object) -> Job[ScrapeResult]:
        checked = check_url(url)
        if isinstance(checked, InvalidURLError):
            return Job(index, url, None, self._failed(checked))
        try:
            check_request("GET", url)  # type: ignore[arg-type]
            platform = self._platform(url, *checked)  # type: ignore[arg-type]
        except Exception as exc:  # an unsafe URL or a failing platform_of: that URL fails
            return Job(index, url, None, self._failed(exc, str(url)))
        platform.pending += 1
        return Job(index, url, platform, None)

    def _failed(self, error: Exception, url: str | None = None) -> ScrapeResult:
        if url is None:
            url = error.url if isinstance(error, ScrapeError) and error.url else ""
        return ScrapeResult(url=url, error=error)

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
        :meth:`ScrapeResult.raise_for_error`), an unsafe request included
        (:class:`UnsafeRequestError`). Raises :class:`ClosedError` when closed and
        :class:`ConfigError` for a bad ``timeout`` or ``headers``.
        """
        self._ensure_open()
        job = self._job(0, url)
        if job.platform is None:
            assert job.result is not None
            return self._finish(job.result)
        platform = job.platform
        try:
            try:
                request = build_request(
                    method,
                    url,
                    self.timeout,
                    params=params,
                    headers=headers,
                    content=content,
                    data=data,
                    json=json,
                    timeout=timeout,
                    follow_redirects=follow_redirects,
                )
            except ScrapeError as exc:
                return self._finish(self._failed(exc, url))
            await acquire_slot(platform)
            try:
                return await self._process(url, platform, None, 0.0, request)
            finally:
                platform.release()
        finally:
            platform.pending -= 1

    def scrape_batch_sync(
        self,
        urls: Any,
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> list[ScrapeResult]:
        """Blocking :meth:`scrape_batch` for scripts and notebooks.

        Opens the engine for the call (and closes it after) when the scraper is not open;
        on a scraper opened by a sync ``with`` (a facade's too) it runs on the loop the
        scraper lives on. Works inside a running event loop (Jupyter); refused only from
        the thread whose loop the scraper was opened on (it would freeze that loop).
        """

        async def call() -> list[ScrapeResult]:
            return await self.scrape_batch(urls, scrape_func, delay_seconds, batch_size, progress)

        return self._run_blocking(call, "scrape_batch")

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
            latency_p50=percentile(ordered, 0.50),
            latency_p95=percentile(ordered, 0.95),
            latency_p99=percentile(ordered, 0.99),
            throughput=(len(finished) - 1) / span if span > 0 else 0.0,
        )


# The classes defined in leadperf._scrape carry their public path: leadperf.scraper.Limits.
for _name in __all__:
    publish(__name__, globals()[_name])
