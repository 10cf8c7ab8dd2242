"""The in-process limits a shared limiter falls back on while its store is unreachable.

They are the scraper's own per-platform rules (FIFO slots, spacing, adaptive slow-down,
``Retry-After``) from :mod:`leadperf._scrape._platform`, so a worker cut off from Redis
keeps every limit of one process: never unlimited, but each worker counts only itself.
"""

from __future__ import annotations

import time

import anyio

from .._scrape._platform import Platform, acquire_slot

__all__ = ["LocalLimits", "report_kind"]

#: Statuses that slow a platform down, as in the scraper.
THROTTLE_STATUSES = frozenset({429, 503})


def report_kind(status: int | None, retry_after: float | None) -> str | None:
    """How an attempt's outcome counts: "throttle", "timeout", "success" or None (a 5xx)."""
    if retry_after is not None or status in THROTTLE_STATUSES:
        return "throttle"
    if status is None:
        return "timeout"
    if status >= 500:
        return None
    return "success"


class LocalLimits:
    """Per-platform slots and spacing for one process (one event loop)."""

    def __init__(self) -> None:
        self._platforms: dict[str, Platform] = {}

    def platform(self, key: str, limit: int) -> Platform:
        """The state of ``key``, created on first use; a changed ``limit`` applies live."""
        platform = self._platforms.get(key)
        if platform is None:
            platform = self._platforms[key] = Platform(key, limit)
        elif platform.max_limit != limit:
            platform.set_max_limit(limit)
        return platform

    async def acquire(self, key: str, limit: int, delay: float) -> None:
        """Wait for a slot of ``key`` (FIFO), then for its spacing."""
        platform = self.platform(key, limit)
        await acquire_slot(platform)
        try:
            wait = platform.reserve(delay, time.monotonic())
            if wait > 0:
                await anyio.sleep(wait)
        except BaseException:
            platform.release()
            raise

    def release(self, key: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        platform = self._platforms.get(key)
        if platform is not None and platform.in_flight > 0:
            platform.release()

    def report(self, key: str, kind: str | None, retry_after: float | None) -> None:
        """Feed an attempt's outcome to the platform's adaptive slow-down."""
        platform = self._platforms.get(key)
        if platform is None or kind is None:
            return
        now = time.monotonic()
        if kind == "throttle":
            platform.on_throttle(now, retry_after)
        elif kind == "timeout":
            platform.on_timeout(now)
        else:
            platform.on_success()

    def in_flight(self) -> int:
        """Slots held in this process right now."""
        return sum(p.in_flight for p in self._platforms.values())
