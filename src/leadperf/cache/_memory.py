"""MemoryCache: an in-process LRU with per-entry TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError
from ._base import BaseCache, glob_to_regex

if TYPE_CHECKING:
    from ..config import Settings
    from ._codec import Codec

__all__ = ["MemoryCache"]

_NONE: Final[Any] = object()  # stands for a stored None (None means "absent" to the base)
_PLAIN = (bytes, str)


class MemoryCache(BaseCache):
    """In-process LRU cache with TTL: O(1) get and set, ``max_size`` entries at most.

    Values are kept as the objects you store (no encode/decode round trip, which is what
    makes a hit cost about a dict lookup), so do not mutate a value after ``set`` or after
    ``get``. Values are still checked against the codec at ``set``: what the other
    backends refuse, this one refuses too. ``max_size`` defaults to
    ``settings.cache.max_size``; the least recently used entry is evicted (and counted)
    when a set would exceed it. ``namespace`` only names the cache here: every instance
    is its own store.
    """

    scheme = "memory"
    _uses_prefix = False

    def __init__(
        self,
        max_size: int | None = None,
        *,
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace,
            default_ttl=default_ttl,
            codec=codec,
            raise_errors=raise_errors,
            settings=settings,
        )
        size = self._settings.cache.max_size if max_size is None else max_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"max_size: must be an integer > 0, got {size!r}", key="max_size")
        self.max_size = size
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryCache(max_size={self.max_size}, namespace={self.namespace!r})"

    # -- stored form: the object itself ---------------------------------------------------

    def _dump(self, value: Any) -> Any:
        if value is None:
            return _NONE
        if not isinstance(value, _PLAIN):
            self.codec.serialize(value)  # refuse what the other backends would refuse
        return value

    def _load(self, stored: Any) -> Any:
        return None if stored is _NONE else stored

    def _size(self) -> int:
        self._purge()
        return len(self._data)

    def _purge(self) -> None:
        now = time.monotonic()
        dead = [k for k, (_, exp) in self._data.items() if exp <= now]
        for k in dead:
            del self._data[k]

    # -- primitives -----------------------------------------------------------------------

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        self._data.clear()

    async def _get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0]

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        left = item[1] - time.monotonic()
        if left <= 0:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0], left

    async def _get_many(self, keys: list[str]) -> Sequence[Any]:
        data = self._data
        now = time.monotonic()
        out: list[Any] = []
        for key in keys:
            item = data.get(key)
            if item is None:
                out.append(None)
            elif item[1] <= now:
                del data[key]
                out.append(None)
            else:
                data.move_to_end(key)
                out.append(item[0])
        return out

    async def _get_many_with_ttl(
        self, keys: list[str]
    ) -> Sequence[tuple[Any, float | None] | None]:
        return [await self._get_with_ttl(k) for k in keys]

    def _put(self, key: str, stored: Any, ttl: float) -> None:
        data = self._data
        data[key] = (stored, time.monotonic() + ttl)
        data.move_to_end(key)
        if len(data) > self.max_size:
            data.popitem(last=False)
            self._evictions += 1

    async def _set(self, key: str, stored: Any, ttl: float) -> None:
        self._put(key, stored, ttl)

    async def _set_many(self, items: list[tuple[str, Any]], ttl: float) -> None:
        for key, stored in items:
            self._put(key, stored, ttl)

    async def _add(self, key: str, stored: Any, ttl: float) -> bool:
        item = self._data.get(key)
        if item is not None and item[1] > time.monotonic():
            return False
        self._put(key, stored, ttl)
        return True

    async def _delete(self, key: str) -> bool:
        item = self._data.pop(key, None)
        return item is not None and item[1] > time.monotonic()

    async def _exists(self, key: str) -> bool:
        item = self._data.get(key)
        return item is not None and item[1] > time.monotonic()

    async def _clear(self, pattern: str | None) -> int:
        now = time.monotonic()
        if pattern is None:
            live = sum(1 for _, exp in self._data.values() if exp > now)
            self._data.clear()
            return live
        match = glob_to_regex(pattern).fullmatch
        doomed = [k for k in self._data if match(k)]
        live = 0
        for k in doomed:
            if self._data.pop(k)[1] > now:
                live += 1
        return live
