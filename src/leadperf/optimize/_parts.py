"""How the facade reaches its parts: closing them, pinging their backends, trimming them
under memory pressure, and calling them from sync code or from another event loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import attrs

from .._core.lifecycle import aclose_resource
from .._portal import get_portal, run_sync
from ..config import Settings
from ..errors import LeadperfError

__all__ = [
    "Blocking",
    "cache_tiers",
    "close_part",
    "forward_if_foreign_loop",
    "jsonable",
    "on_foreign_loop",
    "ping_cache",
    "ping_database",
    "ping_scale",
    "portal_bound",
    "scale_part",
    "scale_stats",
    "trim_parts",
]

_PING_KEY = "leadperf-health-ping"
_CHECK_TIMEOUT = 5.0


async def close_part(part: Any, *, entered: bool) -> None:
    """Close one part through the one lifecycle interface (``await part.aclose()``).

    A part the facade entered is left with ``__aexit__`` instead: scrapers and task
    queues hold task groups that must be left by the task that entered them.
    """
    if entered:
        await part.__aexit__(None, None, None)
    else:
        await aclose_resource(part)


def cache_tiers(cache: Any) -> list[Any]:
    tiers = [t for t in (getattr(cache, "local", None), getattr(cache, "remote", None)) if t]
    return tiers or [cache]


def _backend_name(cache: Any) -> str:
    return "+".join(str(getattr(t, "scheme", type(t).__name__)) for t in cache_tiers(cache))


async def ping_cache(cache: Any) -> dict[str, Any]:
    """A lookup on every tier; failed when it times out or the tier counts a new error
    (caches swallow server errors into their ``errors`` counter by default)."""
    started = time.perf_counter()
    error: str | None = None
    for tier in cache_tiers(cache):
        before = tier.stats().errors
        failure: Exception | None = None
        with anyio.move_on_after(_CHECK_TIMEOUT) as scope:
            try:
                await tier.exists(_PING_KEY)
            except LeadperfError as exc:  # a tier built with raise_errors (a tiered remote)
                failure = exc
        if failure is not None:
            # The class only: a backend's message may quote its URL.
            error = f"{tier.scheme} cache cannot reach its server ({type(failure).__name__})"
        elif scope.cancelled_caught:
            error = f"{tier.scheme} cache did not answer within {_CHECK_TIMEOUT:g}s"
        elif tier.stats().errors > before:
            error = f"{tier.scheme} cache cannot reach its server"
        if error:
            break
    return {
        "configured": True,
        "ok": error is None,
        "backend": _backend_name(cache),
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "error": error,
    }


async def ping_database(db: Any) -> dict[str, Any]:
    started = time.perf_counter()
    error: str | None = None
    try:
        with anyio.fail_after(_CHECK_TIMEOUT):
            await db.fetch("SELECT 1 AS ok")
    except TimeoutError:
        error = f"postgresql did not answer within {_CHECK_TIMEOUT:g}s"
    except LeadperfError as exc:  # leadperf's database errors carry no credentials
        error = " ".join(str(exc).split())  # one line, for status screens and logs
    return {
        "configured": True,
        "ok": error is None,
        "backend": "postgresql",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "error": error,
    }


def scale_part(name: str, settings: Settings) -> Any:
    """The shared ``"limiter"`` or ``"dedup"`` the settings' ``scale`` section names, or
    None when its URL is unset. ``leadperf.scale`` (and redis-py) load only here."""
    conf = settings.scale
    if name == "limiter" and conf.limiter_url:
        from ..scale import RedisLimiter

        return RedisLimiter.from_url(
            conf.limiter_url, lease=conf.lease_seconds, prefix=f"{conf.namespace}:limit"
        )
    if name == "dedup" and conf.dedup_url:
        from ..scale import DedupSet

        # A Redis set's keys carry the namespace; a PostgreSQL set lives in its own table.
        redis = conf.dedup_url.split("://", 1)[0].lower() in ("redis", "rediss", "unix")
        return DedupSet.from_url(conf.dedup_url, **({"namespace": conf.namespace} if redis else {}))
    return None


async def ping_scale(part: Any, kind: str, url: str) -> dict[str, Any]:
    """A round trip to the limiter's or dedup set's store (``part.ping()``)."""
    started = time.perf_counter()
    error: str | None = None
    backend = url.split("://", 1)[0].lower()
    try:
        with anyio.fail_after(_CHECK_TIMEOUT):
            await part.ping()
    except TimeoutError:
        error = f"{kind} store did not answer within {_CHECK_TIMEOUT:g}s"
    except LeadperfError as exc:  # the scale parts' errors carry masked URLs only
        error = " ".join(str(exc).split())
    return {
        "configured": True,
        "ok": error is None,
        "backend": "postgresql" if backend == "postgres" else backend,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "error": error,
    }


def scale_stats(parts: dict[str, Any]) -> dict[str, Any]:
    """``{"limiter": ..., "dedup": ...}``: each built shared part's stats, else None.

    The limiter's ``shared`` is False while it runs on local limits (Redis unreachable).
    """
    out: dict[str, Any] = {}
    for name in ("limiter", "dedup"):
        part = parts.get(name)
        out[name] = None if part is None else jsonable(part.stats())
    return out


async def trim_parts(parts: dict[str, Any]) -> dict[str, Any]:
    """Shrink what the memory guard can: in-process cache tiers down to their (new,
    smaller) bounds with their own ``trim()``, least recently used entries first, and
    every idle Chrome instance with ``ChromePool.trim(0)``: an idle browser holds hundreds
    of MB until its next task, which restarts one in about a second. Lent instances stay.

    Returns ``{"cache": entries dropped, "chrome": instances closed}`` for the parts built.
    """
    from .profiles import shrink_memory_tiers

    out: dict[str, Any] = {}
    cache = parts.get("cache")
    if cache is not None:
        out["cache"] = await shrink_memory_tiers(cache)
    chrome = parts.get("chrome")
    if chrome is not None and callable(getattr(chrome, "trim", None)):
        # Quitting a browser blocks for a while: off the event loop.
        out["chrome"] = await anyio.to_thread.run_sync(chrome.trim, 0)
    return out


class Blocking:
    """Blocking front of one part: coroutine methods run on the shared portal's loop."""

    def __init__(self, part: Any, name: str) -> None:
        self._part = part
        self._name = name

    def __repr__(self) -> str:
        return f"<blocking {self._name}: {self._part!r}>"

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._part, attr)
        if not inspect.iscoroutinefunction(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            return run_sync(functools.partial(value, *args, **kwargs))

        return call


_portal_thread: int | None = None


def _portal_thread_id() -> int:
    global _portal_thread
    if _portal_thread is None:
        try:
            _portal_thread = get_portal().call(threading.get_ident)
        except RuntimeError:  # anyio refuses portal calls from the portal's own thread
            _portal_thread = threading.get_ident()
    return _portal_thread


def on_foreign_loop() -> bool:
    """True when the caller runs an event loop other than the shared portal's."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return threading.get_ident() != _portal_thread_id()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def portal_bound(method: F) -> F:
    """Decorate a facade coroutine method: when the facade runs on the portal (a sync
    ``with``) and the caller awaits from another loop (a notebook cell), run the method on
    the portal's loop, where the parts live."""

    @functools.wraps(method)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_on_portal", False) and on_foreign_loop():
            job = functools.partial(method, self, *args, **kwargs)
            return await anyio.to_thread.run_sync(get_portal().call, job)
        return await method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


def forward_if_foreign_loop(part: Any) -> Any:
    """The part itself, unless the caller runs on another event loop than the portal's:
    then a forwarder whose coroutine methods run on the portal loop (a notebook cell
    awaiting a part of a sync ``with`` block)."""
    return _Forwarder(part) if on_foreign_loop() else part


class _Forwarder:
    """Awaitable front of a part living on the portal loop, for callers on another loop."""

    def __init__(self, part: Any) -> None:
        self._part = part

    def __repr__(self) -> str:
        return repr(self._part)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._part, attr)
        if not inspect.iscoroutinefunction(value):
            return value

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            portal = get_portal()
            job = functools.partial(value, *args, **kwargs)
            return await anyio.to_thread.run_sync(portal.call, job)

        return call


def jsonable(value: Any) -> Any:
    """attrs snapshots -> dicts, recursively; leaves JSON-able values alone."""
    if attrs.has(type(value)):
        return {k: jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
