"""MemoryCache: an in-process LRU with per-entry TTL."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._core.validate import positive_int
from ._base import BaseCache, ValueTooLargeError, check_size, glob_to_regex

if TYPE_CHECKING:
    from ..config import Settings
    from ._codec import Codec

__all__ = ["MemoryCache"]

_NONE: Final[Any] = object()  # stands for a stored None (None means "absent" to the base)
_PLAIN = (bytes, str)
#: Default byte budget of a MemoryCache when settings do not give one.
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
# What one entry costs beyond its value and key: the OrderedDict node and slot, the tuple.
_ENTRY_OVERHEAD: Final = 160


class MemoryCache(BaseCache):
    """In-process LRU cache with TTL: O(1) get and set, bounded by entries and by bytes.

    Values are kept as the objects you store (no encode/decode round trip, which is what
    makes a hit cost about a dict lookup), so do not mutate a value after ``set`` or after
    ``get``. Values are still checked against the codec at ``set``: what the other
    backends refuse, this one refuses too. ``max_size`` (entries) defaults to
    ``settings.cache.max_size`` and ``max_bytes`` to ``settings.cache.max_bytes`` (256 MiB);
    least recently used entries are evicted (and counted) when a set would exceed either.
    An entry's size is its serialized size (``bytes``/``str``: their size in memory) plus
    the key and a fixed bookkeeping cost. One value larger than a quarter of ``max_bytes``,
    or than ``max_value_size``, raises SerializationError instead of emptying the cache.
    ``namespace`` only names the cache here: every instance is its own store.
    """

    scheme = "memory"
    _uses_prefix = False

    def __init__(
        self,
        max_size: int | None = None,
        *,
        max_bytes: int | None = None,
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        max_value_size: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace,
            default_ttl=default_ttl,
            codec=codec,
            raise_errors=raise_errors,
            max_value_size=max_value_size,
            settings=settings,
        )
        size = positive_int(
            self._settings.cache.max_size if max_size is None else max_size, "max_size"
        )
        if max_bytes is None:
            max_bytes = self._settings.cache.max_bytes
        self.max_size = size
        self.max_bytes = check_size(max_bytes, "max_bytes")
        # A single entry may take a quarter of the budget: one huge value must not evict
        # everything else.
        self._entry_limit = min(self.max_value_size, max(1, self.max_bytes // 4))
        self._bytes = 0
        self._data: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"MemoryCache(max_size={self.max_size}, max_bytes={self.max_bytes}, "
            f"namespace={self.namespace!r})"
        )

    @property
    def size_bytes(self) -> int:
        """Bytes accounted to the entries held now (expired ones included until purged)."""
        return self._bytes

    def trim(self) -> int:
        """Bring the cache within ``max_size`` and ``max_bytes`` now, evicting least
        recently used entries (counted in ``stats().evictions``).

        A smaller bound set on a live cache (a profile switch, the memory guard) is
        otherwise reached only one eviction per write. Expired entries go first and are
        not counted as evictions.

        Returns:
            The number of live entries evicted.

        Raises:
            ClosedError: the cache was closed.
        """
        self._check_open()
        self._purge()
        data = self._data
        evicted = 0
        while data and (len(data) > self.max_size or self._bytes > self.max_bytes):
            _, item = data.popitem(last=False)
            self._bytes -= item[2]
            evicted += 1
        self._evictions += evicted
        return evicted

    # -- stored form: (the object itself, its accounted size) ----------------------------

    def _dump(self, value: Any, key: str) -> Any:
        if value is None:
            obj, size = _NONE, 0
        elif isinstance(value, _PLAIN):
            obj, size = value, sys.getsizeof(value)
        else:
            # Serializing refuses what the other backends would refuse, and measures it.
            obj, size = value, len(self.codec.serialize(value)[1])
        size += sys.getsizeof(key) + _ENTRY_OVERHEAD
        if size > self._entry_limit:
            raise ValueTooLargeError(
                f"value takes about {size} bytes, more than {self!r} accepts for one entry "
                f"({self._entry_limit}: max_value_size, or a quarter of max_bytes); store "
                "less or raise max_bytes"
            )
        return obj, size

    def _load(self, stored: Any, key: str) -> Any:
        return None if stored is _NONE else stored

    def _size(self) -> int:
        self._purge()
        return len(self._data)

    def _purge(self) -> None:
        now = time.monotonic()
        dead = [k for k, (_, exp, _) in self._data.items() if exp <= now]
        for k in dead:
            self._drop(k)

    def _drop(self, key: str) -> tuple[Any, float, int] | None:
        item = self._data.pop(key, None)
        if item is not None:
            self._bytes -= item[2]
        return item

    # -- primitives -----------------------------------------------------------------------

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        self._data.clear()
        self._bytes = 0

    async def _get(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        left = item[1] - time.monotonic()
        if left <= 0:
            self._drop(key)
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
                self._drop(key)
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
        obj, size = stored
        data = self._data
        old = data.get(key)
        if old is not None:
            self._bytes -= old[2]
        data[key] = (obj, time.monotonic() + ttl, size)
        data.move_to_end(key)
        self._bytes += size
        while len(data) > self.max_size or self._bytes > self.max_bytes:
            _, evicted = data.popitem(last=False)
            self._bytes -= evicted[2]
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
        item = self._drop(key)
        return item is not None and item[1] > time.monotonic()

    async def _exists(self, key: str) -> bool:
        item = self._data.get(key)
        return item is not None and item[1] > time.monotonic()

    async def _clear(self, pattern: str | None) -> int:
        now = time.monotonic()
        if pattern is None:
            live = sum(1 for _, exp, _ in self._data.values() if exp > now)
            self._data.clear()
            self._bytes = 0
            return live
        match = glob_to_regex(pattern).fullmatch
        doomed = [k for k in self._data if match(k)]
        live = 0
        for k in doomed:
            item = self._drop(k)
            if item is not None and item[1] > now:
                live += 1
        return live
