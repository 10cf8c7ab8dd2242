"""The seams through which a scraper shares limits and dedup with other processes.

``AsyncScraper(limiter=..., dedup=...)`` takes any object with these methods; the Redis and
PostgreSQL implementations live in :mod:`leadperf.scale`. The scraper's own per-process
limits (``max_concurrent``, spacing, adaptive slow-down) always apply as well, so a shared
limiter can only make a worker wait longer, never send more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["SharedDedup", "SharedLimiter"]


@runtime_checkable
class SharedLimiter(Protocol):
    """Per-platform concurrency and pacing shared by every worker that uses the same store.

    The scraper calls ``acquire`` after taking its local slot and before each attempt's
    send, ``release`` when that attempt ends (before any backoff or Retry-After wait, so
    a waiting request holds no shared slot), and ``report`` with every attempt's outcome.
    """

    async def acquire(self, platform: str, limit: int, delay: float) -> object:
        """Wait for one of ``limit`` shared slots of ``platform`` and for its shared pacing.

        Args:
            platform: the platform key (a host by default).
            limit: the platform's ``max_concurrent``.
            delay: the platform's minimum spacing between sends in seconds (0 for none).

        Returns:
            A lease token to hand back to :meth:`release`.
        """
        ...

    async def release(self, platform: str, lease: object) -> None:
        """Give back the slot taken by :meth:`acquire`; never raises for an expired lease."""
        ...

    async def report(self, platform: str, status: int | None, retry_after: float | None) -> None:
        """Record how an attempt ended, so one worker's 429 or 503 slows the platform for all.

        Args:
            platform: the platform key.
            status: the HTTP status, or None for a timeout or connection error.
            retry_after: the ``Retry-After`` delay in seconds, when the server sent one.
        """
        ...


@runtime_checkable
class SharedDedup(Protocol):
    """A set of URLs seen by every worker: each URL is fetched by the first worker only."""

    async def add_many(self, urls: Sequence[str]) -> list[bool]:
        """Add ``urls`` in one round trip; True for each URL that was not in the set before."""
        ...
