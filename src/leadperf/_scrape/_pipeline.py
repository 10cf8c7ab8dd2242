"""The request pipeline: cache -> in-flight dedup -> retry -> send.

One URL becomes one result here, while its platform slot is held. Identical GETs in
flight at the same time share one request (with or without a cache); a waiting caller
gives its slot back while it waits, and so does a retry's backoff or ``Retry-After``
wait (the platform's ``Retry-After`` block still holds every other request back). Each
send goes through the shared limiter when there is one, the proxy rotation when there is
one, and the private-network guard when it is on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urljoin

import anyio
import attrs
import httpx

from .._util import mask_url
from ..errors import (
    CacheError,
    ClosedError,
    HTTPStatusError,
    ScrapeConnectionError,
    ScrapeError,
    ScrapeTimeoutError,
)
from ._client import ScrapeClient
from ._engine import Engine, Response, too_many_redirects_error
from ._platform import Platform, acquire_slot, parse_retry_after
from ._request import Limits, Request
from ._results import Counters, ScrapeResult, response_of, result_of
from ._urls import check_public

if TYPE_CHECKING:
    from ._policy import RetryPolicy
    from ._proxy import ProxyRotation
    from ._shared import SharedLimiter

__all__ = ["CacheLike", "Pipeline", "ScrapeFunc", "acquire_slot"]

_log = logging.getLogger("leadperf.scraper")

ScrapeFunc = Callable[[ScrapeClient, str], Awaitable[Any]]
_THROTTLE_STATUSES = (429, 503)
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_MAX_KEY_LENGTH = 200


class CacheLike(Protocol):
    """What the scraper needs from a cache: leadperf's async ``get``/``set``."""

    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> Any: ...


class _Pending:
    """A request in flight that identical requests wait for instead of sending their own."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event: anyio.Event | None = None  # made by the first caller that waits
        self.result: ScrapeResult | None = None


def cache_key(
    method: str,
    url: str,
    params: Mapping[str, Any] | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> str:
    """The cache and in-flight key of a GET (long URLs hashed).

    Per-request headers are part of it (hashed): two requests for one URL with different
    credentials or languages never share an answer.
    """
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(sorted(params.items()), doseq=True)}"
    key = f"scrape:{method} {url}"
    if len(key) > _MAX_KEY_LENGTH:
        key = f"scrape:{method} sha256:{hashlib.sha256(url.encode()).hexdigest()}"
    if headers:
        folded = repr(sorted((k.lower(), v) for k, v in headers)).encode()
        key += f" headers:{hashlib.sha256(folded).hexdigest()[:32]}"
    return key


def _shareable(request: Request) -> bool:
    return request.method == "GET" and request.content is None


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


async def _away_from_slot(platform: Platform, wait: Awaitable[Any]) -> None:
    """Give the slot back for ``wait``, then take one again (FIFO).

    Cancelled without a slot, the count is restored at once (nothing is sent): the
    caller's cleanup gives back a slot it believes it holds.
    """
    platform.release()
    held = False
    try:
        await wait
        await acquire_slot(platform)
        held = True
    finally:
        if not held:
            platform.in_flight += 1


class Pipeline:
    """cache -> dedup -> retry -> send, mixed into :class:`AsyncScraper`."""

    timeout: float
    retry: RetryPolicy
    cache_ttl: float
    _engine: Engine | None
    _cache: CacheLike | None
    _counters: Counters
    _inflight: dict[str, _Pending]
    _limiter: SharedLimiter | None
    _proxies: ProxyRotation | None
    _allow_private: bool
    _response_limits: Limits

    # -- send -----------------------------------------------------------------------------

    async def _request(self, platform: Platform, request: Request, delay: float = 0.0) -> Response:
        """One request on the wire (or from the cache), with stats and politeness feedback."""
        cache = self._cache
        key = None
        if cache is not None and _shareable(request):
            key = cache_key(request.method, request.url, request.params, request.headers)
            hit = await self._cache_get(key, request.url)
            if hit is not None:
                return hit
        response = await self._send(platform, request, delay)
        if key is not None and 200 <= response.status_code < 300:
            await self._cache_set(key, response)
        return response

    async def _send(self, platform: Platform, request: Request, delay: float = 0.0) -> Response:
        engine = self._engine
        if engine is None:
            raise ClosedError("this AsyncScraper is closed; create a new one")
        proxies = self._proxies
        if proxies is not None:
            request = attrs.evolve(request, proxy=proxies.pick())
        limiter = self._limiter
        lease: object = None
        if limiter is not None:
            spacing = max(delay, platform.min_delay, platform.adaptive_delay)
            lease = await limiter.acquire(platform.key, platform.limit, spacing)
        counters = self._counters
        counters.requests += 1
        counters.in_flight += 1
        status: int | None = None
        retry_after: float | None = None
        try:
            if self._allow_private:
                response = await engine.request(request)
            else:
                response = await self._guarded(engine, request)
            status = response.status_code
        except (ScrapeTimeoutError, ScrapeConnectionError) as exc:
            if isinstance(exc, ScrapeTimeoutError):
                platform.on_timeout(time.monotonic())
            if proxies is not None and request.proxy is not None:
                proxies.failed(request.proxy)
            raise
        finally:
            counters.in_flight -= 1
            if limiter is not None:
                with anyio.CancelScope(shield=True):
                    await limiter.release(platform.key, lease)
                    if status is None:
                        await limiter.report(platform.key, None, None)
        if status == 407 and proxies is not None and request.proxy is not None:
            proxies.failed(request.proxy)
        retry_after = self._feedback(platform, response)
        if limiter is not None:
            await limiter.report(platform.key, status, retry_after)
        return response

    def _feedback(self, platform: Platform, response: Response) -> float | None:
        """Count the response and slow its platform down on a throttle signal."""
        counters = self._counters
        counters.latencies.append(response.elapsed)  # the engine times the request itself
        counters.finished.append(time.perf_counter())
        status = response.status_code
        codes = counters.status_codes
        codes[status] = codes.get(status, 0) + 1
        if status < 400:
            platform.on_success()
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None and status not in _THROTTLE_STATUSES:
            if status < 500:
                platform.on_success()
            return None
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
        return retry_after

    async def _guarded(self, engine: Engine, request: Request) -> Response:
        """Send with every hop's address checked: redirects are followed here, not by the engine."""
        deadline = time.monotonic() + request.timeout
        current = attrs.evolve(request, follow_redirects=False)
        limit = self._response_limits.max_redirects
        for _ in range(limit + 1):
            await check_public(current.url)
            left = deadline - time.monotonic()
            if left <= 0:
                from ._engine import timeout_error

                raise timeout_error(request.url, request.timeout)
            response = await engine.request(attrs.evolve(current, timeout=left))
            location = response.headers.get("location")
            if not request.follow_redirects or response.status_code not in _REDIRECTS:
                return response
            if location is None:
                return response
            target = urljoin(current.url, location)
            method, content, headers = current.method, current.content, current.headers
            status = response.status_code
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, content = "GET", None
                headers = tuple(h for h in headers if h[0].lower() != "content-type")
            current = attrs.evolve(
                current, method=method, url=target, params=None, content=content, headers=headers
            )
        raise too_many_redirects_error(request.url, limit)

    # -- cache ----------------------------------------------------------------------------

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

    # -- one URL --------------------------------------------------------------------------

    async def _process(
        self,
        url: str,
        platform: Platform,
        scrape_func: ScrapeFunc | None,
        delay: float,
        request: Request | None = None,
    ) -> ScrapeResult:
        """One URL to one result (cache, in-flight dedup, retries); the slot is held."""
        if request is None:
            if scrape_func is not None:
                result = await self._attempts(url, platform, scrape_func, delay, None)
                return self._finish(result)
            request = Request("GET", url, self.timeout)
        elif not _shareable(request):
            return self._finish(await self._attempts(url, platform, None, delay, request))
        cache = self._cache
        if cache is not None or request.params or request.headers:
            key = cache_key(request.method, url, request.params, request.headers)
        else:
            key = url
        inflight = self._inflight
        while True:
            if cache is not None:
                hit = await self._cache_get(key, url)
                if hit is not None:
                    return self._finish(result_of(url, hit, None, 0, None, from_cache=True))
            pending = inflight.get(key)
            if pending is None:
                break
            event = pending.event
            if event is None:
                event = pending.event = anyio.Event()
            await _away_from_slot(platform, event.wait())
            if pending.result is not None:
                self._counters.deduplicated += 1
                shared = attrs.evolve(pending.result, url=url, attempts=0, from_cache=True)
                return self._finish(shared)
            # the request we waited for was cancelled: look again
        pending = inflight[key] = _Pending()
        try:
            result = await self._attempts(url, platform, None, delay, request, cache=False)
            if (
                cache is not None
                and result.error is None
                and result.status_code
                and 200 <= result.status_code < 300
            ):
                await self._cache_set(key, response_of(result))
            pending.result = result
        finally:
            del inflight[key]
            if pending.event is not None:
                pending.event.set()
        return self._finish(result)

    async def _get(self, url: str, platform: Platform, delay: float) -> ScrapeResult:
        """A plain GET of a batch: :meth:`_process` flattened into one coroutine.

        Taken when there is no cache, shared limiter or proxy rotation and nobody else is
        fetching ``url``: dedup bookkeeping, spacing, the send, its feedback and the
        result happen here, as :meth:`_process` does them. A first attempt that fails (an
        error or a status >= 400) goes on in :meth:`_attempts`, retries and all; anything
        unusual takes :meth:`_process` from the start.
        """
        engine = self._engine
        inflight = self._inflight
        if (
            engine is None
            or self._cache is not None
            or self._limiter is not None
            or self._proxies is not None
            or url in inflight
        ):
            return await self._process(url, platform, None, delay)
        counters = self._counters
        pending = inflight[url] = _Pending()
        try:
            request = Request("GET", url, self.timeout)
            wait = platform.reserve(delay, time.monotonic())
            if wait > 0:
                while wait > 0:
                    await anyio.sleep(wait)
                    # A Retry-After that arrived during the sleep holds this send back too.
                    wait = platform.blocked_until - time.monotonic()
                engine = self._engine
                if engine is None:
                    raise ClosedError("this AsyncScraper is closed; create a new one")
            counters.requests += 1
            counters.in_flight += 1
            response: Response | None = None
            error: ScrapeError | None = None
            try:
                if self._allow_private:
                    response = await engine.request(request)
                else:
                    response = await self._guarded(engine, request)
            except (ScrapeTimeoutError, ScrapeConnectionError) as exc:
                if isinstance(exc, ScrapeTimeoutError):
                    platform.on_timeout(time.monotonic())
                error = exc
            except ScrapeError as exc:
                error = exc
            finally:
                counters.in_flight -= 1
            if response is not None:
                self._feedback(platform, response)
            if response is not None and response.status_code < 400:
                result = ScrapeResult(  # what result_of(url, response, None, 1, None) builds
                    url=url,
                    status_code=response.status_code,
                    content=response.content,
                    headers=response.headers,
                    elapsed=response.elapsed,
                    attempts=1,
                )
            else:
                result = await self._attempts(
                    url, platform, None, delay, request, cache=False, first=(response, error)
                )
            pending.result = result
        finally:
            del inflight[url]
            if pending.event is not None:
                pending.event.set()
        counters.results += 1
        if result.error is not None:
            counters.failed += 1
            self._count_error(type(result.error).__name__)
        return result

    def _finish(self, result: ScrapeResult) -> ScrapeResult:
        counters = self._counters
        counters.results += 1
        if result.error is not None:
            counters.failed += 1
            self._count_error(type(result.error).__name__)
        return result

    async def _attempt(
        self,
        url: str,
        platform: Platform,
        scrape_func: ScrapeFunc | None,
        delay: float,
        request: Request | None,
        cache: bool,
    ) -> tuple[Response | None, Any, Exception | None]:
        """One try: ``(response, value, error)``."""
        if scrape_func is not None:
            client = ScrapeClient(self, platform)
            try:
                value = await scrape_func(client, url)
            except Exception as exc:  # the user's code failed: record it on the result
                return client.last_response, None, exc
            return client.last_response, value, None
        assert request is not None
        try:
            if cache and self._cache is not None:
                response = await self._request(platform, request, delay)
            else:
                response = await self._send(platform, request, delay)
        except ScrapeError as exc:
            return None, None, exc
        return response, None, None

    async def _attempts(
        self,
        url: str,
        platform: Platform,
        scrape_func: ScrapeFunc | None,
        delay: float,
        request: Request | None,
        *,
        cache: bool = True,
        first: tuple[Response | None, Exception | None] | None = None,
    ) -> ScrapeResult:
        """Try until success or the policy gives up; ``first`` is an attempt already made."""
        policy = self.retry
        attempt = 0
        response: Response | None
        error: Exception | None
        value: Any
        while True:
            attempt += 1
            if first is not None:
                (response, error), value, first = first, None, None
            else:
                wait = platform.reserve(delay, time.monotonic())
                while wait > 0:
                    await anyio.sleep(wait)
                    # A Retry-After that arrived during the sleep holds this send back too.
                    wait = platform.blocked_until - time.monotonic()
                if scrape_func is None and not (cache and self._cache is not None):
                    assert request is not None  # the bulk path: one coroutine less
                    value = None
                    try:
                        response = await self._send(platform, request, delay)
                        error = None
                    except ScrapeError as exc:
                        response, error = None, exc
                else:
                    response, value, error = await self._attempt(
                        url, platform, scrape_func, delay, request, cache
                    )
            failed = response is not None and response.status_code >= 400
            if error is None and failed and scrape_func is None:
                assert response is not None
                error = HTTPStatusError(
                    f"{mask_url(url)} answered HTTP {response.status_code}"
                    + (f" after {attempt} attempts" if attempt > 1 else ""),
                    url=url,
                    status_code=response.status_code,
                )
            if error is None:
                return result_of(url, response, value, attempt, None)
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
                        # The wait holds no slot: the platform's other URLs go meanwhile
                        # (a Retry-After still blocks them through the platform's block).
                        await _away_from_slot(platform, anyio.sleep(pause))
                    continue
            return result_of(url, response, value, attempt, error)
