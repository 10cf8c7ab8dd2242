"""TieredCache: a local L1 in front of a shared L2, serving from L1 while L2 is down."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .._core.lifecycle import AsyncResource
from .._core.validate import non_negative_number
from ..errors import CacheUnavailableError, ConfigError
from ._base import MISSING, BaseCache, CacheStats

if TYPE_CHECKING:
    from ..config import Settings

_log = logging.getLogger("leadperf.cache")

__all__ = ["TieredCache"]

_REMOTE_FAILURES = (CacheUnavailableError,)


class TieredCache(AsyncResource):
    """Read local first, then remote (filling local); write both.

    ``local`` defaults to a :class:`MemoryCache` and ``remote`` to a :class:`RedisCache`,
    both from ``settings``. The tiered cache owns both and closes them. A local entry
    filled from the remote never outlives the remote entry's remaining TTL.

    An entry the remote cannot decode (corrupt, forged, over the size cap) is a miss for
    that key and counted in ``stats().errors``; the remote stays in use for other keys.
    When the remote fails (unreachable, or unreachable at open), the failure is counted
    in ``stats().errors``, the call is served from local, and the remote is left alone
    for ``retry_after`` seconds (default 1.0) before the next call tries it again: so the
    cache keeps working through an outage and recovers by itself when the remote returns.
    With ``raise_errors=True`` remote failures raise CacheUnavailableError instead.
    Writes made while the remote is down reach only local; deletes too (the remote may
    serve the old value again after it returns until that entry expires).
    """

    scheme = "tiered"
    _closed_hint: ClassVar[str] = "create a new cache"
    # Each tier opens lazily on first use, so closing reaches them even when the tiered
    # cache itself was never opened.
    _close_when_new: ClassVar[bool] = True

    def __init__(
        self,
        local: BaseCache | None = None,
        remote: BaseCache | None = None,
        *,
        retry_after: float = 1.0,
        raise_errors: bool = False,
        settings: Settings | None = None,
    ) -> None:
        retry_after = non_negative_number(retry_after, "retry_after")
        for name, value in (("local", local), ("remote", remote)):
            if value is not None and not isinstance(value, BaseCache):
                raise ConfigError(
                    f"{name}: must be a leadperf cache (MemoryCache, RedisCache, ...), "
                    f"got {value!r}",
                    key=name,
                )
        if local is None:
            from ._memory import MemoryCache

            local = MemoryCache(settings=settings)
        if remote is None:
            from ._redis import RedisCache

            remote = RedisCache(settings=settings)
        self.local: BaseCache = local
        self.remote: BaseCache = remote
        # The tiered cache handles remote outages itself, so it needs to see them; an entry
        # the remote holds but cannot decode (corrupt, forged, oversized) is only a miss
        # for that key, never an outage, and is counted in the remote's own stats.
        remote.set_error_policy(unavailable=True, bad_entries=bool(raise_errors))
        self.retry_after = float(retry_after)
        self._raise_errors = bool(raise_errors)
        self._down_until = 0.0
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._deletes = 0
        self._errors = 0

    def __repr__(self) -> str:
        return f"TieredCache(local={self.local!r}, remote={self.remote!r})"

    @property
    def remote_available(self) -> bool:
        """False while the remote is being left alone after a failure."""
        return time.monotonic() >= self._down_until

    # -- lifecycle ------------------------------------------------------------------------

    async def _aopen(self) -> None:
        await self.local.open()
        try:
            await self.remote.open()
        except CacheUnavailableError as exc:
            self._remote_failed(exc)

    async def _aclose(self) -> None:
        try:
            await self.local.close()
        finally:
            await self.remote.close()

    async def open(self) -> Self:
        """Open local, then try remote (a remote that is down is counted, not raised).

        Returns:
            The cache itself.

        Raises:
            ClosedError: the cache was closed.
        """
        return await super().open()

    async def close(self) -> None:
        """Close both tiers; idempotent (same as :meth:`aclose`)."""
        await self.aclose()

    def _remote_failed(self, exc: BaseException) -> None:
        self._errors += 1
        if self._remote_ok():  # log when it goes down, not on calls skipped while it is down
            _log.warning(
                "%r: remote cache unreachable (%s: %s); serving from the local cache, "
                "retrying in %.1f s",
                self,
                type(exc).__name__,
                exc,
                self.retry_after,
            )
        self._down_until = time.monotonic() + self.retry_after
        if self._raise_errors:
            if isinstance(exc, CacheUnavailableError):
                raise exc
            raise CacheUnavailableError(f"{self!r}: remote failed ({exc})") from exc

    def _remote_ok(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _fill(self, key: str, value: Any, left: float | None) -> None:
        ttl = self.local.default_ttl if left is None else min(left, self.local.default_ttl)
        if ttl > 0:
            await self.local.set(key, value, ttl=ttl)

    # -- the protocol ---------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the value under ``key``, or ``default`` when absent, expired or unreachable.

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.
            default: what to return when there is no live value.

        Returns:
            The stored value, or ``default``.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
            SerializationError: a corrupt or forged entry, with ``raise_errors=True`` only.
        """
        value = await self.local.get(key, MISSING)
        if value is not MISSING:
            self._hits += 1
            return value
        if self._remote_ok():
            try:
                found = await self.remote.get_with_ttl(key)
            except _REMOTE_FAILURES as exc:
                self._remote_failed(exc)
            else:
                if found is not None:
                    await self._fill(key, found[0], found[1])
                    self._hits += 1
                    return found[0]
        self._misses += 1
        return default

    async def get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        """Return ``(value, seconds left or None)`` for a live entry, else None.

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.

        Returns:
            ``(value, remaining TTL in seconds)``; None when absent, expired or unreachable.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        found = await self.local.get_with_ttl(key)
        if found is None and self._remote_ok():
            try:
                found = await self.remote.get_with_ttl(key)
            except _REMOTE_FAILURES as exc:
                self._remote_failed(exc)
            else:
                if found is not None:
                    await self._fill(key, found[0], found[1])
        if found is None:
            self._misses += 1
        else:
            self._hits += 1
        return found

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: ``default_ttl``).

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.
            value: anything the codec encodes.
            ttl: seconds > 0, or None for the cache's ``default_ttl``.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ConfigError: a bad ``ttl``.
            SerializationError: a value the codec refuses, or over ``max_value_size``
                (:class:`ValueTooLargeError`); raised before anything is written.
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        await self.local.set(key, value, ttl)
        self._sets += 1
        if self._remote_ok():
            try:
                await self.remote.set(key, value, ttl)
            except CacheUnavailableError as exc:
                self._remote_failed(exc)

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` holds no live entry.

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.
            value: anything the codec encodes.
            ttl: seconds > 0, or None for ``default_ttl``.

        Returns:
            True when stored; False when a live entry was there (or the server failed).

        Raises:
            CacheKeyError: a bad key (before any I/O).
            SerializationError: a value the codec refuses.
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        if self._remote_ok():
            try:
                added = await self.remote.add(key, value, ttl)
            except CacheUnavailableError as exc:
                self._remote_failed(exc)
            else:
                if added:
                    await self.local.set(key, value, ttl)
                    self._sets += 1
                return added
        added = await self.local.add(key, value, ttl)
        if added:
            self._sets += 1
        return added

    async def delete(self, key: str) -> bool:
        """Remove ``key``.

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.

        Returns:
            True when a live entry was removed.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        deleted = await self.local.delete(key)
        if self._remote_ok():
            try:
                deleted = await self.remote.delete(key) or deleted
            except CacheUnavailableError as exc:
                self._remote_failed(exc)
        if deleted:
            self._deletes += 1
        return deleted

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a live entry (counts neither hit nor miss).

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.

        Returns:
            True for a live entry.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        if await self.local.exists(key):
            return True
        if self._remote_ok():
            try:
                return await self.remote.exists(key)
            except CacheUnavailableError as exc:
                self._remote_failed(exc)
        return False

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return the live values among ``keys``, in one round trip.

        Args:
            keys: cache keys (each as for :meth:`get`).

        Returns:
            ``{key: value}`` for the live keys; absent or expired keys are left out.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        wanted = list(dict.fromkeys(keys))
        result = await self.local.get_many(wanted)
        missing = [k for k in wanted if k not in result]
        if missing and self._remote_ok():
            try:
                found = await self.remote.get_many_with_ttl(missing)
            except _REMOTE_FAILURES as exc:
                self._remote_failed(exc)
            else:
                for key, (value, left) in found.items():
                    await self._fill(key, value, left)
                    result[key] = value
        self._hits += len(result)
        self._misses += len(wanted) - len(result)
        return {k: result[k] for k in wanted if k in result}

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store every item of ``mapping`` for ``ttl`` seconds; all are encoded before
        any write, so a refused value leaves the cache untouched.

        Args:
            mapping: ``{key: value}``.
            ttl: seconds > 0, or None for ``default_ttl``.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ConfigError: a bad ``ttl``.
            SerializationError: a value the codec refuses or over ``max_value_size``.
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        await self.local.set_many(mapping, ttl)
        self._sets += len(mapping)
        if self._remote_ok():
            try:
                await self.remote.set_many(mapping, ttl)
            except CacheUnavailableError as exc:
                self._remote_failed(exc)

    async def clear(self, pattern: str | None = None) -> int:
        """Remove the entries of this namespace whose key matches glob ``pattern``.

        Only this cache's namespace is touched. In ``pattern``, ``*`` matches any run of
        characters and ``?`` one character; every other character is literal.

        Args:
            pattern: a glob over keys, or None for every key of the namespace.

        Returns:
            How many live entries were removed (0 when the server failed).

        Raises:
            CacheKeyError: a bad pattern (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the remote failed, with ``raise_errors=True`` only (else the
                call is served from local and the outage counted in ``stats().errors``).
        """
        removed = await self.local.clear(pattern)
        if self._remote_ok():
            try:
                removed = await self.remote.clear(pattern)
            except CacheUnavailableError as exc:
                self._remote_failed(exc)
        self._deletes += removed
        return removed

    def stats(self) -> CacheStats:
        """Return a frozen snapshot of this cache's counters.

        Returns:
            A :class:`CacheStats`; ``size`` is None where the backend cannot count cheaply.
        """
        local = self.local.stats()
        lookups = self._hits + self._misses
        return CacheStats(
            backend=self.scheme,
            hits=self._hits,
            misses=self._misses,
            hit_rate=self._hits / lookups if lookups else 0.0,
            sets=self._sets,
            deletes=self._deletes,
            evictions=local.evictions,
            errors=self._errors + local.errors + self.remote.bad_entries,
            size=local.size,
        )
