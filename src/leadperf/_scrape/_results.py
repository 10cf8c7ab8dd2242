"""Results and stats: what one URL produced, and snapshots of the scraper's counters."""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import httpx

from .._core.stats import percentile
from .._util import mask_url
from ._engine import Response, decode

__all__ = [
    "LATENCY_WINDOW",
    "Counters",
    "PlatformStats",
    "ScrapeResult",
    "ScraperStats",
    "percentile",
    "response_of",
    "result_of",
]

#: Latencies kept for the percentiles in :meth:`AsyncScraper.stats`.
LATENCY_WINDOW = 10_000


def _result_repr(result: ScrapeResult) -> str:
    if result.duplicate:
        state = "duplicate"
    else:
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
    :class:`HTTPStatusError` in ``error`` (the body is kept). ``duplicate`` is True when
    the scraper's shared ``dedup=`` set already held the URL: no request was made, ``ok``
    is False and ``error`` None.
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
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        """True when the URL was fetched (and ``scrape_func`` ran) without error."""
        return self.error is None and not self.duplicate

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


class Counters:
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
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.finished: deque[float] = deque(maxlen=LATENCY_WINDOW)


def result_of(
    url: str,
    response: Response | None,
    value: Any,
    attempts: int,
    error: Exception | None,
    *,
    from_cache: bool = False,
) -> ScrapeResult:
    """The :class:`ScrapeResult` of a finished URL."""
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


def response_of(result: ScrapeResult) -> Response:
    """A :class:`Response` carrying ``result``'s status, body and headers."""
    return Response(result.status_code or 0, result.content, result.headers, result.url)
