"""The pool's async gates: one pair of anyio limiters per event loop."""

from __future__ import annotations

import weakref
from typing import Any

import anyio

__all__ = ["LoopLimiters"]


class LoopLimiters:
    """A ``(gate, threads)`` pair of :class:`anyio.CapacityLimiter` per event loop.

    Limiters belong to one event loop, so each loop gets its own pair (dropped with the
    loop). The gate, ``size`` wide, bounds acquires in flight; the thread limiter,
    ``2 * size`` wide, leaves room for every release so none starves.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_loop: weakref.WeakKeyDictionary[Any, tuple[anyio.CapacityLimiter, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._fallback: tuple[anyio.CapacityLimiter, ...] | None = None

    def get(self) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        """The running loop's pair (one shared pair off asyncio, e.g. under trio)."""
        try:
            import asyncio

            key: Any = asyncio.get_running_loop()
        except RuntimeError:
            key = None
        pair = self._by_loop.get(key) if key is not None else self._fallback
        if pair is None:
            pair = (anyio.CapacityLimiter(self._size), anyio.CapacityLimiter(2 * self._size))
            if key is not None:
                self._by_loop[key] = pair
            else:
                self._fallback = pair
        return pair[0], pair[1]
