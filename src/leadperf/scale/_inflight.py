"""InflightCache: a worker waits for a URL another worker is fetching, through the cache.

The scraper already shares one fetch between identical requests inside a process. Across
processes, wrap the shared cache and pass the wrapper as ``AsyncScraper(cache=...)``::

    shared = leadperf.cache.from_url("redis://host:6379/0", namespace="crawl")
    scraper = AsyncScraper(cache=InflightCache(shared, wait=30.0))

It rests on two public seams only. The scraper looks a GET up with ``cache.get(key)``
before fetching and stores a successful response with ``cache.set(key, ...)``. On a miss
the wrapper claims ``key`` with ``cache.add(claim, ...)`` (atomic "only if absent"): the
worker that wins fetches; the others poll the cache until the winner's response arrives
and return it as a hit. A winner that fails stores nothing, so its claim expires after
``wait`` seconds, and a waiter also stops waiting then and fetches for itself: no URL
waits longer than ``wait`` for someone else.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

from ..errors import ConfigError

__all__ = ["InflightCache"]

_MISSING = object()


class InflightCache:
    """Wrap a leadperf cache so concurrent workers fetch a cached GET once (see module doc).

    Args:
        cache: any leadperf cache with ``get``, ``set``, ``add`` and ``delete`` (shared
            between workers: Redis, PostgreSQL, or a TieredCache over one of them).
        wait: longest wait (seconds) for another worker's fetch before fetching anyway;
            also the lifetime of a claim.
        poll_interval: longest pause (seconds) between two looks at the cache while waiting.

    Raises:
        ConfigError: ``cache`` lacks the methods, or a bad number.
    """

    def __init__(self, cache: Any, *, wait: float = 30.0, poll_interval: float = 0.05) -> None:
        for method in ("get", "set", "add", "delete"):
            if not callable(getattr(cache, method, None)):
                raise ConfigError(
                    f"cache: must be a leadperf cache with async {method}(), got {cache!r}",
                    key="cache",
                )
        for name, value in (("wait", wait), ("poll_interval", poll_interval)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not value > 0
                or math.isinf(value)
            ):
                raise ConfigError(f"{name}: must be seconds > 0, got {value!r}", key=name)
        self.cache = cache
        self.wait = float(wait)
        self.poll_interval = float(poll_interval)
        self._owner = uuid.uuid4().hex
        self.claims = 0
        self.waited = 0
        self.shared_hits = 0
        self.wait_timeouts = 0

    def __repr__(self) -> str:
        return f"<InflightCache over {self.cache!r} wait={self.wait}s>"

    @staticmethod
    def claim_key(key: str) -> str:
        """The cache key that marks ``key`` as being fetched."""
        return f"inflight:{key}"

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value; on a miss, claim the fetch or wait for whoever holds it."""
        value = await self.cache.get(key, _MISSING)
        if value is not _MISSING:
            return value
        claim = self.claim_key(key)
        deadline = time.monotonic() + self.wait
        pause = 0.005
        waited = False
        while True:
            if await self.cache.add(claim, self._owner, ttl=self.wait):
                # The previous holder may have stored its value and dropped its claim
                # between our look and our claim: look once more before fetching.
                value = await self.cache.get(key, _MISSING)
                if value is not _MISSING:
                    await self.cache.delete(claim)
                    self.shared_hits += waited
                    return value
                self.claims += 1
                return default  # ours to fetch
            if not waited:
                waited = True
                self.waited += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.wait_timeouts += 1
                return default  # waited long enough: fetch it ourselves
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)
            value = await self.cache.get(key, _MISSING)
            if value is not _MISSING:
                self.shared_hits += 1
                return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store the fetched value, then drop the claim so waiters see it at once."""
        await self.cache.set(key, value, ttl=ttl)
        await self.cache.delete(self.claim_key(key))

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Pass-through to the wrapped cache."""
        return bool(await self.cache.add(key, value, ttl=ttl))

    async def delete(self, key: str) -> bool:
        """Pass-through to the wrapped cache."""
        return bool(await self.cache.delete(key))

    async def close(self) -> None:
        """Close the wrapped cache."""
        await self.cache.close()
