"""Caches with pluggable backends behind one async protocol.

>>> from leadperf.cache import from_url
>>> cache = from_url("memory://")                  # or sqlite:///cache.db, redis://..., postgresql://...
>>> # async with cache: await cache.set("k", {"a": 1}, ttl=60); await cache.get("k")

Backends: :class:`MemoryCache` (LRU + TTL), :class:`SqliteCache` (embedded, persistent),
:class:`RedisCache`, :class:`PostgresCache` and :class:`TieredCache` (local in front of
a shared remote). Every value goes through one :class:`Codec`; :func:`cached` memoizes
async functions with single-flight.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .._core.lazy import lazy_exports as _lazy_exports
from .._core.lazy import publish as _publish
from .._util import mask_url as _mask_url
from ..errors import ConfigError as _ConfigError
from ..errors import ValueTooLargeError
from ._base import MAX_KEY_LENGTH, Cache, CacheStats
from ._base import BaseCache as _BaseCache
from ._base import backend_for as _backend_for
from ._base import known_schemes as _known_schemes
from ._base import register_backend as _register_backend
from ._codec import Codec
from ._decorator import cached
from ._memory import MemoryCache
from ._tiered import TieredCache

if TYPE_CHECKING:
    from ..config import Settings
    from ._postgres import PostgresCache
    from ._redis import RedisCache
    from ._sqlite import SqliteCache

__all__ = [
    "MAX_KEY_LENGTH",
    "Cache",
    "CacheStats",
    "Codec",
    "MemoryCache",
    "PostgresCache",
    "RedisCache",
    "SqliteCache",
    "TieredCache",
    "ValueTooLargeError",
    "cached",
    "from_settings",
    "from_url",
    "migrate_sqlite",
]

# Backends load on first use so ``import leadperf.cache`` stays light; each URL scheme
# maps to the backend class it builds (cashews-style registry).
_LAZY = {
    "SqliteCache": "._sqlite",
    "RedisCache": "._redis",
    "PostgresCache": "._postgres",
    "migrate_sqlite": "._migrate",
}
for _scheme, _path in {
    "memory": "leadperf.cache._memory:MemoryCache",
    "sqlite": "leadperf.cache._sqlite:SqliteCache",
    "redis": "leadperf.cache._redis:RedisCache",
    "rediss": "leadperf.cache._redis:RedisCache",
    "unix": "leadperf.cache._redis:RedisCache",
    "postgresql": "leadperf.cache._postgres:PostgresCache",
    "postgres": "leadperf.cache._postgres:PostgresCache",
}.items():
    _register_backend(_scheme, _path)

__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)


_INT_OPTIONS = {
    "max_size",
    "min_size",
    "max_connections",
    "compression_threshold",
    "max_bytes",
    "max_value_size",
}
_FLOAT_OPTIONS = {
    "default_ttl",
    "connect_timeout",
    "timeout",
    "busy_timeout",
    "retention",
    "cleanup_interval",
}


def _query_options(query: str) -> dict[str, Any]:
    """Options given in a memory:// or sqlite:// URL's query string (``?max_size=100``)."""
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True):
        try:
            if name in _INT_OPTIONS:
                options[name] = int(raw)
            elif name in _FLOAT_OPTIONS:
                options[name] = float(raw)
            elif name == "table":
                options[name] = raw
            else:
                known = ", ".join(sorted(_INT_OPTIONS | _FLOAT_OPTIONS | {"table"}))
                raise _ConfigError(f"url: unknown option {name!r}; known: {known}", key="url")
        except ValueError:
            raise _ConfigError(f"url: option {name}={raw!r} is not a number", key="url") from None
    return options


def from_url(url: str, *, namespace: str = "leadperf", **options: Any) -> _BaseCache:
    """Build the cache ``url`` names.

    Args:
        url: ``memory://``, ``sqlite:///path.db``, ``redis://``, ``rediss://``, ``unix://``,
            ``postgresql://`` (or ``postgres://``). ``memory://`` and ``sqlite://`` URLs take
            options as query parameters (``memory://?max_size=100``); Redis and PostgreSQL
            URLs pass their query to the driver.
        namespace: the key namespace (a prefix on shared stores).
        **options: the backend constructor's keyword arguments (``default_ttl``, ``codec``,
            ``raise_errors``, ``settings``, ``max_size``, ``max_bytes``, ``max_value_size``...).

    Returns:
        The backend, not yet connected (it connects on first use or ``open()``).

    Raises:
        ConfigError: not a URL, an unknown scheme or option (the message lists the known
            ones), or a bad option value.
        MissingDependencyError: the backend's optional extra is not installed.
    """
    if not isinstance(url, str) or "://" not in url:
        raise _ConfigError(
            f"url: expected a cache URL like memory://, sqlite:///cache.db, "
            f"redis://host:6379/0 or postgresql://host/db, got {url!r}",
            key="url",
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    target = _backend_for(scheme)
    if target is None:
        raise _ConfigError(
            f"url: unknown cache scheme {scheme!r} in {_mask_url(url)!r}; use one of "
            f"{', '.join(s + '://' for s in _known_schemes())}",
            key="url",
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        return cls(namespace=namespace, **{**_query_options(parts.query), **options})  # type: ignore[no-any-return]
    if scheme == "sqlite":
        from ._sqlite import sqlite_path_from_url

        path = sqlite_path_from_url(url.split("?", 1)[0])
        merged = {**_query_options(parts.query), **options}
        return cls(path, namespace=namespace, **merged)  # type: ignore[no-any-return]
    return cls(url, namespace=namespace, **options)  # type: ignore[no-any-return]


def from_settings(settings: Settings | None = None) -> _BaseCache | TieredCache:
    """Build the cache ``settings.cache`` describes.

    ``cache.url`` when set; else a TieredCache(MemoryCache, RedisCache) when
    ``redis_enabled`` and ``redis_url`` are set; else a MemoryCache of ``max_size``.
    Default TTL, compression and threshold come from ``settings.cache``.

    Args:
        settings: the settings (``Settings.from_env()`` when None).

    Returns:
        The cache, not yet connected.

    Raises:
        ConfigError: a bad cache URL or setting.
        MissingDependencyError: the backend's optional extra is not installed.
    """
    if settings is None:
        from ..config import Settings

        settings = Settings.from_env()
    cs = settings.cache
    if cs.url:
        return from_url(cs.url, settings=settings)
    if cs.redis_enabled and cs.redis_url:
        from ._redis import RedisCache

        return TieredCache(
            MemoryCache(settings=settings), RedisCache(cs.redis_url, settings=settings)
        )
    return MemoryCache(settings=settings)


# Public names carry their public path (as httpx's do): leadperf.cache.MemoryCache.
for _name in (
    "Cache",
    "CacheStats",
    "Codec",
    "MemoryCache",
    "TieredCache",
    "cached",
):
    _publish(__name__, globals()[_name])
