"""``cached``: memoize an async function in any cache, one computation per missing key."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import anyio

from ..errors import ConfigError
from ._base import MAX_KEY_LENGTH, MISSING, Cache, ValueTooLargeError, check_ttl

__all__ = ["cached"]

_log = logging.getLogger("leadperf.cache")

P = ParamSpec("P")
R = TypeVar("R")


class _Flight:
    """One in-progress computation that concurrent callers of the same key wait for."""

    __slots__ = ("done", "error", "result", "retry")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.retry = False


def _default_key(prefix: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    text = repr((args, sorted(kwargs.items())))
    if len(prefix) + len(text) + 1 <= MAX_KEY_LENGTH and "\x00" not in text:
        return f"{prefix}:{text}"
    return f"{prefix[:300]}:{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


def cached(
    cache: Cache,
    ttl: float | None = None,
    key: str | Callable[..., str] | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Cache an async function's results in ``cache``.

    Single-flight: while one call computes a missing key, concurrent calls with that key in
    this process wait for its result (or its exception) instead of computing again.
    ``None`` results are cached; a result too large for the cache (ValueTooLargeError) is
    returned uncached, with a warning on the ``leadperf.cache`` logger.

    Args:
        cache: any leadperf cache.
        ttl: seconds > 0, or None for the cache's default TTL.
        key: a format string over the bound arguments (``"user:{user_id}"``), a callable
            taking the function's arguments and returning the key, or None for
            ``"<module>.<qualname>:<repr of args>"`` (hashed when long).

    Returns:
        A decorator for ``async def`` functions.

    Raises:
        ConfigError: a bad ``ttl`` or ``key`` (at decoration time).
    """
    if ttl is not None:
        check_ttl(ttl)
    if key is not None and not (isinstance(key, str) or callable(key)):
        raise ConfigError(f"key: must be a format str or a callable, got {key!r}", key="key")

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(
                f"cached() decorates async functions; {func!r} is not one", key="func"
            )
        prefix = f"{func.__module__}.{func.__qualname__}"
        signature = inspect.signature(func)
        inflight: dict[str, _Flight] = {}

        def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if key is None:
                return _default_key(prefix, args, kwargs)
            if isinstance(key, str):
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                return key.format(**bound.arguments)
            return key(*args, **kwargs)

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            k = make_key(args, kwargs)
            while True:
                value = await cache.get(k, MISSING)
                if value is not MISSING:
                    return value  # type: ignore[no-any-return]
                flight = inflight.get(k)
                if flight is None:
                    break
                await flight.done.wait()
                if flight.retry:
                    continue  # the computing caller was cancelled: compute here instead
                if flight.error is not None:
                    raise flight.error
                return flight.result  # type: ignore[no-any-return]
            flight = inflight[k] = _Flight()
            try:
                result = await func(*args, **kwargs)
                flight.result = result
                try:
                    await cache.set(k, result, ttl)
                except ValueTooLargeError as exc:
                    # The result is fine, only too big to keep: return it uncached.
                    _log.warning("%s: result not cached: %s", k[:80], exc)
                return result
            except anyio.get_cancelled_exc_class():
                flight.retry = True
                raise
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                del inflight[k]
                flight.done.set()

        return wrapper

    return decorate
