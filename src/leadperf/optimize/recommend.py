"""Recommendations: rules that read a performance analysis and say what to change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..config import Settings

__all__ = ["Recommendation", "recommend"]


@attrs.frozen
class Recommendation:
    """One suggested change: which ``area``, how urgent, why, and the setting to touch."""

    area: str
    severity: str  # "info" | "warning" | "critical"
    message: str
    setting: str | None = None
    suggested: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as the analysis and the REST router return it."""
        return attrs.asdict(self)


def _num(section: Mapping[str, Any] | None, key: str, default: float = 0.0) -> float:
    if not section:
        return default
    value = section.get(key, default)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )


def recommend(analysis: Mapping[str, Any], settings: Settings) -> list[Recommendation]:
    """Apply the rules to ``analysis`` (as built by ``run_performance_analysis``)."""
    out: list[Recommendation] = []
    system = analysis.get("system") or {}
    cache = analysis.get("cache_performance") or {}
    scraper = analysis.get("scraper_performance") or {}
    chrome = analysis.get("chrome_pool") or {}
    database = analysis.get("database") or {}

    mem = _num(system, "memory_percent")
    if mem >= 90:
        out.append(
            Recommendation(
                "system",
                "critical",
                f"System memory is {mem:.0f}% used: switch to the memory_focused profile "
                "and lower CHROME_POOL_SIZE.",
                "profile",
                "memory_focused",
            )
        )
    elif mem >= 80:
        out.append(
            Recommendation(
                "system",
                "warning",
                f"System memory is {mem:.0f}% used: consider the memory_focused profile.",
                "profile",
                "memory_focused",
            )
        )
    cpu = _num(system, "cpu_percent")
    if cpu >= 90:
        out.append(
            Recommendation(
                "system",
                "warning",
                f"CPU is {cpu:.0f}% busy: lower ASYNC_MAX_CONCURRENT or CHROME_POOL_SIZE.",
                "ASYNC_MAX_CONCURRENT",
                max(1, settings.scraper.max_concurrent // 2),
            )
        )

    lookups = _num(cache, "hits") + _num(cache, "misses")
    hit_rate = _num(cache, "hit_rate")
    if lookups >= 100 and hit_rate < 0.5:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"Cache hit rate is {hit_rate:.0%} over {lookups:.0f} lookups: raise "
                "PERFORMANCE_CACHE_TTL or check that keys repeat.",
                "PERFORMANCE_CACHE_TTL",
                int(settings.cache.default_ttl * 2),
            )
        )
    sets = _num(cache, "sets")
    evictions = _num(cache, "evictions")
    if sets >= 100 and evictions / sets > 0.1:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"{evictions:.0f} of {sets:.0f} cache writes evicted an entry: raise "
                "PERFORMANCE_CACHE_MAX_SIZE.",
                "PERFORMANCE_CACHE_MAX_SIZE",
                settings.cache.max_size * 2,
            )
        )
    if _num(cache, "errors") > 0:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"The cache counted {_num(cache, 'errors'):.0f} backend errors: check that "
                "its server is reachable.",
            )
        )

    requests = _num(scraper, "requests")
    rate_limited = _num(scraper, "rate_limited")
    if requests >= 50 and rate_limited / requests > 0.05:
        out.append(
            Recommendation(
                "scraper",
                "warning",
                f"{rate_limited:.0f} of {requests:.0f} requests were rate limited (429/503): "
                "lower ASYNC_MAX_CONCURRENT or add a delay.",
                "ASYNC_MAX_CONCURRENT",
                max(1, settings.scraper.max_concurrent - 2),
            )
        )
    errors = _num(scraper, "failed")
    if requests >= 50 and errors / requests > 0.1:
        out.append(
            Recommendation(
                "scraper",
                "warning",
                f"{errors:.0f} of {requests:.0f} requests failed: check the error kinds in "
                "the scraper stats and ASYNC_TIMEOUT.",
                "ASYNC_TIMEOUT",
                settings.scraper.timeout * 2,
            )
        )

    waits = _num(chrome, "waits")
    utilization = _num(chrome, "utilization")
    if waits > 0 and utilization >= 0.9:
        out.append(
            Recommendation(
                "chrome",
                "warning",
                f"Every browser was busy and {waits:.0f} tasks waited: raise CHROME_POOL_SIZE "
                "if memory allows.",
                "CHROME_POOL_SIZE",
                settings.chrome.pool_size + 2,
            )
        )
    if _num(chrome, "crashed") > 0:
        out.append(
            Recommendation(
                "chrome",
                "info",
                f"{_num(chrome, 'crashed'):.0f} browsers crashed and were replaced: watch "
                "their memory (max_memory_mb) and the pages that crash them.",
            )
        )

    if _num(database, "requests_waiting") > 0 or _num(database, "pool_wait_ms") > 1000:
        out.append(
            Recommendation(
                "database",
                "warning",
                "Requests waited for a database connection: raise DB_POOL_SIZE or DB_MAX_OVERFLOW.",
                "DB_POOL_SIZE",
                settings.database.pool_size + 5,
            )
        )
    return out
