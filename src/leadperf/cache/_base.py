"""The Cache protocol, its stats snapshot, and the wrapper every backend shares.

A backend implements a few raw primitives on already-namespaced keys and stored
values (``_get``, ``_set``, ``_get_many`` ...). :class:`BaseCache` turns them into the
public protocol once: key and TTL validation, the namespace, the codec, stats counting,
lazy opening and the error policy (an unreachable server gives a miss and counts an
error, or raises with ``raise_errors=True``).

Length: over 600 lines only because every public method carries its Args/Returns/
Raises docstring; the code itself is under 500 lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, Self, runtime_checkable

import anyio
import attrs

from .._core.lifecycle import AsyncResource, State
from .._core.redact import mask_text
from ..errors import (
    CacheUnavailableError,
    ConfigError,
    SerializationError,
    ValueTooLargeError,
)
from ._checks import (
    DEFAULT_MAX_VALUE_SIZE,
    MAX_KEY_LENGTH,
    MAX_NAMESPACE_LENGTH,
    backend_for,
    bad_key,
    check_namespace,
    check_pattern,
    check_size,
    check_ttl,
    glob_to_regex,
    known_schemes,
    register_backend,
)
from ._codec import Codec

if TYPE_CHECKING:
    from ..config import Settings

# Validation helpers and the scheme registry live in _checks; re-exported for the backends.
__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "BaseCache",
    "Cache",
    "CacheStats",
    "State",
    "ValueTooLargeError",
    "backend_for",
    "bad_key",
    "check_namespace",
    "check_pattern",
    "check_size",
    "check_ttl",
    "glob_to_regex",
    "known_schemes",
    "register_backend",
]

MISSING: Final[Any] = object()


@attrs.frozen
class CacheStats:
    """Counters of one cache since it was created; a frozen snapshot.

    ``hit_rate`` is ``hits / (hits + misses)`` (0.0 before any lookup). ``evictions``
    counts entries dropped to respect ``max_size`` (expiry is not an eviction).
    ``errors`` counts operations that failed on the server. ``size`` is the number of
    live entries where the backend knows it cheaply, else None.
    """

    backend: str
    hits: int = 0
    misses: int = 0
    hit_rate: float = 0.0
    sets: int = 0
    deletes: int = 0
    evictions: int = 0
    errors: int = 0
    size: int | None = None


@runtime_checkable
class Cache(Protocol):
    """What every leadperf cache offers: async, TTL in seconds, str keys, any codec value."""

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under ``key``, or ``default`` when absent or expired."""

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (None: the cache's default TTL)."""

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True when stored."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when a live entry was removed."""

    async def exists(self, key: str) -> bool:
        """True when ``key`` holds a live entry."""

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys present; absent keys are left out."""

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store every item of ``mapping`` with one TTL."""

    async def clear(self, pattern: str | None = None) -> int:
        """Remove entries matching glob ``pattern`` (all when None) in this namespace."""

    def stats(self) -> CacheStats:
        """Return a snapshot of this cache's counters."""

    async def close(self) -> None:
        """Release connections; idempotent. A closed cache raises ClosedError."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# -- the shared wrapper ---------------------------------------------------------------------


class BaseCache(AsyncResource):
    """Behaviour every backend shares, over its raw primitives. Not used directly.

    ``max_value_size`` (bytes, default ``settings.cache.max_value_size``, 16 MiB) caps one
    stored entry: a larger value raises SerializationError at ``set`` before anything is
    written.

    Subclasses set ``scheme``, declare the exceptions meaning "server unreachable" with
    ``_set_unavailable`` and implement ``_open``, ``_close``, ``_get``, ``_get_many``, ``_set``,
    ``_set_many``, ``_add``, ``_delete``, ``_exists``, ``_clear`` and ``_get_with_ttl`` on
    namespaced keys and stored values (``_dump``/``_load`` turn values into stored form).
    """

    scheme: ClassVar[str] = ""
    _closed_hint: ClassVar[str] = "create a new cache"
    _unavailable: tuple[type[BaseException], ...] = ()
    # Stored keys are "<namespace>:<key>"; backends without a shared store leave it "".
    _uses_prefix: ClassVar[bool] = True

    def __init__(
        self,
        *,
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        max_value_size: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.from_env()
        self._settings = settings
        if max_value_size is None:
            max_value_size = settings.cache.max_value_size
        self.max_value_size = check_size(max_value_size, "max_value_size")
        self.namespace = check_namespace(namespace)
        self.default_ttl = check_ttl(
            settings.cache.default_ttl if default_ttl is None else default_ttl, "default_ttl"
        )
        if codec is not None and not isinstance(codec, Codec):
            raise ConfigError(f"codec: must be a Codec, got {codec!r}", key="codec")
        self.codec = codec if codec is not None else Codec.from_settings(settings)
        self._raise_errors = bool(raise_errors)
        # Whether an undecodable entry raises; TieredCache turns it off on its remote (an
        # unreachable server must raise there, a bad entry must stay a miss).
        self._raise_bad_entries = self._raise_errors
        self._prefix = f"{self.namespace}:" if self._uses_prefix else ""
        self._catch: tuple[type[BaseException], ...] = (CacheUnavailableError,)
        self._state = State.NEW
        self._open_lock: anyio.Lock | None = None
        self._open_failed_at = 0.0
        self._reopen_after = 1.0
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._deletes = 0
        self._evictions = 0
        self._errors = 0
        self._bad_entries = 0
        # Credentials in the backend's URL, scrubbed from every error message shown.
        self._secrets: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def _aopen(self) -> None:
        try:
            await self._open()
        except CacheUnavailableError:
            raise
        except self._unavailable as exc:
            raise self._unavailable_error(exc) from exc

    async def _aclose(self) -> None:
        await self._close()

    async def open(self) -> Self:
        """Connect now (otherwise the first operation does); idempotent.

        Returns:
            The cache itself.

        Raises:
            CacheUnavailableError: the server cannot be reached.
            ClosedError: the cache was closed.
        """
        return await super().open()

    async def close(self) -> None:
        """Release connections and pools; idempotent (same as :meth:`aclose`)."""
        await self.aclose()

    async def _ensure(self) -> None:
        """Open lazily; raise ClosedError when closed (callers test the state first).

        After a failed lazy open the server is not tried again for ``_reopen_after``
        seconds: calls fail at once instead of each waiting out a connect timeout.
        """
        self._check_open()
        wait = self._open_failed_at + self._reopen_after - time.monotonic()
        if self._open_failed_at and wait > 0:
            raise CacheUnavailableError(
                f"{self!r} could not connect moments ago; next attempt in {wait:.1f}s"
            )
        try:
            await self.open()
        except CacheUnavailableError:
            self._open_failed_at = time.monotonic()
            raise
        self._open_failed_at = 0.0

    # -- policy ---------------------------------------------------------------------------

    def set_error_policy(self, *, unavailable: bool, bad_entries: bool) -> None:
        """Choose what raises instead of counting as a miss (``raise_errors`` sets both).

        A tiered cache's remote raises on an unreachable server (the tiered cache serves
        from local and counts the outage) while an entry it cannot decode stays a miss.

        Args:
            unavailable: raise CacheUnavailableError when the server cannot be reached.
            bad_entries: raise SerializationError for a corrupt, forged or oversized entry.
        """
        self._raise_errors = bool(unavailable)
        self._raise_bad_entries = bool(bad_entries)

    def _set_unavailable(self, *types: type[BaseException]) -> None:
        """Declare the backend's exceptions that mean "the server cannot be reached"."""
        self._unavailable = types
        self._catch = (*types, CacheUnavailableError)

    def _unavailable_error(self, exc: BaseException) -> CacheUnavailableError:
        return CacheUnavailableError(
            f"{self!r} cannot reach its server ({type(exc).__name__}: {self._scrub(exc)}); "
            "check the URL and that the server runs"
        )

    @property
    def bad_entries(self) -> int:
        """Stored entries found corrupt, forged or oversized (each also counted in
        ``stats().errors``); a tiered cache adds its remote's to its own errors."""
        return self._bad_entries

    def count_failure(self, exc: BaseException) -> str:
        """Count a failure of work run for this cache in the background (an expiry job) in
        ``stats().errors``.

        Args:
            exc: the failure.

        Returns:
            ``str(exc)`` without this cache's credentials, for a log line.
        """
        self._errors += 1
        return self._scrub(exc)

    def _scrub(self, exc: BaseException) -> str:
        """``str(exc)`` without the credentials of this cache's URL (drivers may quote it)."""
        return mask_text(str(exc), self._secrets)

    def _failed(self, exc: BaseException) -> None:
        """Count a server failure; raise CacheUnavailableError when ``raise_errors``."""
        self._errors += 1
        if self._raise_errors:
            if isinstance(exc, CacheUnavailableError):
                raise exc
            raise self._unavailable_error(exc) from exc

    def _key(self, key: Any) -> str:
        if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
            raise bad_key(key)
        return self._prefix + key

    def _ttl(self, ttl: Any) -> float:
        if ttl is None:
            return self.default_ttl
        return check_ttl(ttl)

    def _dump(self, value: Any, key: str) -> Any:
        stored = self.codec.encode(value, key)
        if len(stored) > self.max_value_size:
            raise self._too_large(len(stored))
        return stored

    def _too_large(self, size: int) -> SerializationError:
        return ValueTooLargeError(
            f"value is {size} bytes encoded, more than {self!r}'s max_value_size of "
            f"{self.max_value_size}; store less or raise max_value_size"
        )

    def _load(self, stored: Any, key: str) -> Any:
        return self.codec.decode(stored, key)

    def _load_or_fail(self, stored: Any, key: str) -> Any:
        """Decode a stored entry; a corrupt, forged or oversized one is an error and a miss."""
        try:
            return self._load(stored, key)
        except Exception:
            self._errors += 1
            self._bad_entries += 1
            if self._raise_bad_entries:
                raise
            return MISSING

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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
            SerializationError: a corrupt or forged entry, with ``raise_errors=True`` only.
        """
        k = self._key(key)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            stored = await self._get(k)
        except self._catch as exc:
            self._failed(exc)
            self._misses += 1
            return default
        if stored is None:
            self._misses += 1
            return default
        value = self._load_or_fail(stored, k)
        if value is MISSING:
            self._misses += 1
            return default
        self._hits += 1
        return value

    async def get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        """Return ``(value, seconds left or None)`` for a live entry, else None.

        Args:
            key: a non-empty ``str`` of at most ``MAX_KEY_LENGTH`` characters, no NUL.

        Returns:
            ``(value, remaining TTL in seconds)``; None when absent, expired or unreachable.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        k = self._key(key)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            found = await self._get_with_ttl(k)
        except self._catch as exc:
            self._failed(exc)
            self._misses += 1
            return None
        if found is None:
            self._misses += 1
            return None
        value = self._load_or_fail(found[0], k)
        if value is MISSING:
            self._misses += 1
            return None
        self._hits += 1
        return value, found[1]

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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        k = self._key(key)
        seconds = self._ttl(ttl)
        stored = self._dump(value, k)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            await self._set(k, stored, seconds)
        except self._catch as exc:
            self._failed(exc)
            return
        self._sets += 1

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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        k = self._key(key)
        seconds = self._ttl(ttl)
        stored = self._dump(value, k)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            added = await self._add(k, stored, seconds)
        except self._catch as exc:
            self._failed(exc)
            return False
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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        k = self._key(key)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            deleted = await self._delete(k)
        except self._catch as exc:
            self._failed(exc)
            return False
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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        k = self._key(key)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            return await self._exists(k)
        except self._catch as exc:
            self._failed(exc)
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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        wanted = list(dict.fromkeys(keys))
        stored_keys = [self._key(k) for k in wanted]
        if not wanted:
            return {}
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            found = await self._get_many(stored_keys)
        except self._catch as exc:
            self._failed(exc)
            self._misses += len(wanted)
            return {}
        result: dict[str, Any] = {}
        load = self._load_or_fail
        for key, sk, stored in zip(wanted, stored_keys, found, strict=True):
            if stored is not None:
                value = load(stored, sk)
                if value is not MISSING:
                    result[key] = value
        self._hits += len(result)
        self._misses += len(wanted) - len(result)
        return result

    async def get_many_with_ttl(self, keys: Sequence[str]) -> dict[str, tuple[Any, float | None]]:
        """Like :meth:`get_many`, with each live entry's seconds left.

        Args:
            keys: cache keys.

        Returns:
            ``{key: (value, seconds left or None)}`` for the live keys.

        Raises:
            CacheKeyError: a bad key (before any I/O).
            ClosedError: the cache was closed.
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        wanted = list(dict.fromkeys(keys))
        stored_keys = [self._key(k) for k in wanted]
        if not wanted:
            return {}
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            found = await self._get_many_with_ttl(stored_keys)
        except self._catch as exc:
            self._failed(exc)
            self._misses += len(wanted)
            return {}
        result: dict[str, tuple[Any, float | None]] = {}
        for key, sk, item in zip(wanted, stored_keys, found, strict=True):
            if item is not None:
                value = self._load_or_fail(item[0], sk)
                if value is not MISSING:
                    result[key] = (value, item[1])
        self._hits += len(result)
        self._misses += len(wanted) - len(result)
        return result

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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        seconds = self._ttl(ttl)
        items = []
        for key, value in mapping.items():
            k = self._key(key)
            items.append((k, self._dump(value, k)))
        if not items:
            return
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            await self._set_many(items, seconds)
        except self._catch as exc:
            self._failed(exc)
            return
        self._sets += len(items)

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
            CacheUnavailableError: the server failed, with ``raise_errors=True`` only (else
                the failure is counted in ``stats().errors`` and the call acts as a miss).
        """
        if pattern is not None:
            check_pattern(pattern)
        try:
            if self._state is not State.OPEN:
                await self._ensure()
            removed = await self._clear(pattern)
        except self._catch as exc:
            self._failed(exc)
            return 0
        self._deletes += removed
        return removed

    def stats(self) -> CacheStats:
        """Return a frozen snapshot of this cache's counters.

        Returns:
            A :class:`CacheStats`; ``size`` is None where the backend cannot count cheaply.
        """
        lookups = self._hits + self._misses
        return CacheStats(
            backend=self.scheme,
            hits=self._hits,
            misses=self._misses,
            hit_rate=self._hits / lookups if lookups else 0.0,
            sets=self._sets,
            deletes=self._deletes,
            evictions=self._evictions,
            errors=self._errors,
            size=self._size(),
        )

    def _size(self) -> int | None:
        return None

    # -- raw primitives (backends) -------------------------------------------------------

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _get(self, key: str) -> Any:
        raise NotImplementedError

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        raise NotImplementedError

    async def _get_many(self, keys: list[str]) -> Sequence[Any]:
        raise NotImplementedError

    async def _get_many_with_ttl(
        self, keys: list[str]
    ) -> Sequence[tuple[Any, float | None] | None]:
        return [await self._get_with_ttl(k) for k in keys]

    async def _set(self, key: str, stored: Any, ttl: float) -> None:
        raise NotImplementedError

    async def _set_many(self, items: list[tuple[str, Any]], ttl: float) -> None:
        for key, stored in items:
            await self._set(key, stored, ttl)

    async def _add(self, key: str, stored: Any, ttl: float) -> bool:
        raise NotImplementedError

    async def _delete(self, key: str) -> bool:
        raise NotImplementedError

    async def _exists(self, key: str) -> bool:
        raise NotImplementedError

    async def _clear(self, pattern: str | None) -> int:
        raise NotImplementedError
