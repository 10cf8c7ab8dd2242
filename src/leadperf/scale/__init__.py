"""Scale out: limits, dedup and in-flight fetches shared by many workers on many machines.

Imported on demand (``import leadperf`` never loads it). Needs ``pip install
'leadperf[scale]'`` (redis-py; psycopg for the PostgreSQL dedup set).

- :class:`RedisLimiter` for ``AsyncScraper(limiter=...)``: per-platform concurrency leases,
  spacing and adaptive slow-down shared on Redis, local limits while Redis is down.
- :class:`DedupSet` for ``AsyncScraper(dedup=...)``: ``DedupSet.from_url("redis://..." |
  "postgresql://...")``, ``add_many(urls) -> list[bool]`` in one round trip.
- :class:`InflightCache` for ``AsyncScraper(cache=...)``: a worker waits for a URL another
  worker is fetching instead of fetching it again.
- :func:`normalize_url`: the URL spelling dedup compares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from ._dedup import DedupSet, DedupStats, PostgresDedupSet, RedisDedupSet
    from ._inflight import InflightCache
    from ._limiter import Lease, LimiterStats, RedisLimiter
    from ._normalize import normalize_url

__all__ = [
    "DedupSet",
    "DedupStats",
    "InflightCache",
    "Lease",
    "LimiterStats",
    "PostgresDedupSet",
    "RedisDedupSet",
    "RedisLimiter",
    "normalize_url",
]

_LAZY: dict[str, str] = {
    "DedupSet": "._dedup",
    "DedupStats": "._dedup",
    "PostgresDedupSet": "._dedup",
    "RedisDedupSet": "._dedup",
    "InflightCache": "._inflight",
    "Lease": "._limiter",
    "LimiterStats": "._limiter",
    "RedisLimiter": "._limiter",
    "normalize_url": "._normalize",
}

__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
