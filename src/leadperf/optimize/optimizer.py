"""The :class:`PerformanceOptimizer` facade: builds every part from one ``Settings``,
owns their lifecycle, reports their stats and applies tuning profiles."""

from __future__ import annotations

import enum
import logging
import threading
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from .._portal import get_portal, run_sync
from ..config import Settings
from ..errors import ClosedError, ConfigError
from ..monitor import MetricsRegistry, SystemMonitor
from .profiles import PROFILES, get_profile
from .recommend import recommend

if TYPE_CHECKING:
    from ..cache import Cache
    from ..pool import ChromePool
    from ..scraper import AsyncScraper
    from .database import DatabaseOptimizer
    from .resources import ResourceOptimizer

__all__ = ["PerformanceOptimizer", "get_performance_optimizer"]


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class PerformanceOptimizer:
    """One object that builds, tunes, monitors and closes every leadperf part.

    Parts are built lazily from ``settings`` on first access (``perf.cache``,
    ``perf.scraper``, ``perf.chrome``, ``perf.resources``, ``perf.database``,
    ``perf.monitor``); ones passed in are used as they are and still closed with the
    facade. Use ``async with PerformanceOptimizer(settings) as perf:`` in async code and
    ``with PerformanceOptimizer(settings) as perf:`` in scripts and notebooks (the sync
    form runs the parts on leadperf's shared background event loop, so it works inside a
    running loop too). A closed optimizer is never reopened.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        cache: Cache | None = None,
        scraper: AsyncScraper | None = None,
        chrome: ChromePool | None = None,
        database: DatabaseOptimizer | None = None,
        registry: MetricsRegistry | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigError(f"settings must be a leadperf.Settings, got {type(settings)!r}")
        self.settings = settings or Settings.from_env()
        # Only leadperf's own logger: the host application owns logging configuration.
        logging.getLogger("leadperf").setLevel(self.settings.log_level)
        self.registry = registry or MetricsRegistry()
        self._lock = threading.RLock()
        self._state = _State.NEW
        self._parts: dict[str, Any] = {}
        self._entered: set[str] = set()
        self._sync_cm: AbstractContextManager[PerformanceOptimizer] | None = None
        for name, part in (
            ("cache", cache),
            ("scraper", scraper),
            ("chrome", chrome),
            ("database", database),
        ):
            if part is not None:
                self._adopt(name, part)

    def __repr__(self) -> str:
        parts = ",".join(sorted(self._parts)) or "-"
        return (
            f"<PerformanceOptimizer profile={self.settings.profile!r} "
            f"state={self._state.value} parts={parts}>"
        )

    # -- parts ----------------------------------------------------------------------------

    def _adopt(self, name: str, part: Any) -> Any:
        self._parts[name] = part
        stats = getattr(part, "stats", None)
        if callable(stats):
            self.registry.register(name, stats)
        return part

    def _part(self, name: str) -> Any:
        with self._lock:
            if self._state is _State.CLOSED:
                raise ClosedError("this PerformanceOptimizer is closed; create a new one")
            part = self._parts.get(name)
            if part is None:
                part = self._adopt(name, self._build(name))
            return part

    def _build(self, name: str) -> Any:
        s = self.settings
        if name == "cache":
            from ..cache import from_settings

            return from_settings(s)
        if name == "scraper":
            from ..scraper import AsyncScraper

            return AsyncScraper(settings=s, cache=self.cache if s.cache.enabled else None)
        if name == "chrome":
            from ..pool import ChromePool

            return ChromePool(settings=s)
        if name == "resources":
            from .resources import ResourceOptimizer

            return ResourceOptimizer(settings=s)
        if name == "database":
            if not s.database.url:
                raise ConfigError(
                    "no database configured: set DATABASE_URL (or settings.database.url)",
                    key="database.url",
                )
            from .database import DatabaseOptimizer

            cache = self.cache if s.database.enable_query_cache else None
            return DatabaseOptimizer(settings=s, cache=cache)
        if name == "monitor":
            return SystemMonitor(settings=s)
        raise AssertionError(name)

    @property
    def cache(self) -> Cache:
        """The cache the settings describe (memory by default; see ``leadperf.cache``)."""
        part: Cache = self._part("cache")
        return part

    @property
    def scraper(self) -> AsyncScraper:
        """The async scraper, caching GET responses in :attr:`cache` when caching is on."""
        part: AsyncScraper = self._part("scraper")
        return part

    @property
    def chrome(self) -> ChromePool:
        """The Chrome pool (browsers start only when a task acquires one)."""
        part: ChromePool = self._part("chrome")
        return part

    @property
    def resources(self) -> ResourceOptimizer:
        """Screenshot and text compression."""
        part: ResourceOptimizer = self._part("resources")
        return part

    @property
    def database(self) -> DatabaseOptimizer:
        """Bulk database work; needs ``DATABASE_URL``. Opens on first use."""
        part: DatabaseOptimizer = self._part("database")
        return part

    @property
    def monitor(self) -> SystemMonitor:
        """The psutil system monitor."""
        part: SystemMonitor = self._part("monitor")
        return part

    @property
    def closed(self) -> bool:
        """True once :meth:`close` (or leaving the context) has run."""
        return self._state is _State.CLOSED

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> PerformanceOptimizer:
        """Open the cache and the scraper, and start system sampling if enabled."""
        if self._state is _State.CLOSED:
            raise ClosedError("this PerformanceOptimizer is closed; create a new one")
        if self._state is _State.OPEN:
            return self
        self._state = _State.OPEN
        try:
            for name in ("cache", "scraper"):
                part = self._part(name)
                await part.__aenter__()
                self._entered.add(name)
            if self.settings.monitoring.enabled and self.settings.monitoring.system_monitoring:
                monitor = self.monitor
                self.registry.register("system", monitor.latest_or_sample)
                await monitor.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Close every part this optimizer built or was given; idempotent."""
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            parts = dict(self._parts)
        errors: list[BaseException] = []
        # Reverse build order: users of the cache close before the cache.
        for name in ("monitor", "scraper", "chrome", "database", "resources", "cache"):
            part = parts.get(name)
            if part is None:
                continue
            try:
                if name == "monitor":
                    await part.stop()
                elif name in self._entered:
                    await part.__aexit__(None, None, None)
                elif callable(getattr(part, "aclose", None)):
                    await part.aclose()
                elif callable(getattr(part, "close", None)):
                    result = part.close()
                    if hasattr(result, "__await__"):
                        await result
            except Exception as exc:  # close the rest, then report the first failure
                errors.append(exc)
            self.registry.unregister(name)
        self.registry.unregister("system")
        if errors:
            raise errors[0]

    async def __aenter__(self) -> PerformanceOptimizer:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> PerformanceOptimizer:
        # Enter and exit in one task on the shared portal's loop: parts may hold task
        # groups, whose scopes must be left by the task that entered them.
        cm = get_portal().wrap_async_context_manager(self)
        result = cm.__enter__()
        self._sync_cm = cm
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Blocking :meth:`aclose` (runs on leadperf's shared background loop)."""
        cm, self._sync_cm = self._sync_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)
        else:
            run_sync(self.aclose)

    # -- analysis and tuning --------------------------------------------------------------

    async def run_performance_analysis(self) -> dict[str, Any]:
        """Sample the system and every built part; return numbers and recommendations.

        Keys: ``timestamp``, ``profile``, ``system``, ``cache_performance`` (with
        ``hit_rate`` in [0, 1]), ``scraper_performance``, ``chrome_pool``, ``database``,
        ``resources``, ``recommendations`` (list of dicts) and ``metrics`` (every
        registered source, flattened).
        """
        if self._state is _State.CLOSED:
            raise ClosedError("this PerformanceOptimizer is closed; create a new one")
        snapshot = await self.monitor.sample_async()
        cache_stats = self.cache.stats()
        parts = dict(self._parts)

        def part_stats(name: str) -> dict[str, Any] | None:
            part = parts.get(name)
            if part is None or not callable(getattr(part, "stats", None)):
                return None
            stats: dict[str, Any] = _jsonable(part.stats())
            return stats

        analysis: dict[str, Any] = {
            "timestamp": time.time(),
            "profile": self.settings.profile,
            "system": _jsonable(snapshot),
            "cache_performance": _jsonable(cache_stats),
            "scraper_performance": part_stats("scraper"),
            "chrome_pool": part_stats("chrome"),
            "database": part_stats("database"),
            "resources": part_stats("resources"),
        }
        analysis["recommendations"] = [r.as_dict() for r in recommend(analysis, self.settings)]
        analysis["metrics"] = self.registry.collect()
        return analysis

    async def apply_optimizations(self, profile: str = "balanced") -> dict[str, Any]:
        """Switch to ``profile``: new settings, GC thresholds, and live limits where parts
        support changing them. Parts not yet built pick the new settings up when built.

        Returns ``profile_applied``, ``previous_profile``, ``changes`` (``section.key`` ->
        ``[old, new]``), ``applied_live`` and ``gc_thresholds``.
        """
        if self._state is _State.CLOSED:
            raise ClosedError("this PerformanceOptimizer is closed; create a new one")
        chosen = get_profile(profile)
        old = self.settings
        new = chosen.settings(old)
        changes: dict[str, list[Any]] = {}
        for section in ("cache", "database", "monitoring", "scraper", "chrome", "resources"):
            before, after = getattr(old, section), getattr(new, section)
            for field in attrs.fields(type(before)):
                a, b = getattr(before, field.name), getattr(after, field.name)
                if a != b and "url" not in field.name:
                    changes[f"{section}.{field.name}"] = [a, b]
        self.settings = new
        applied_live: list[str] = []
        for name, part in list(self._parts.items()):
            apply = getattr(part, "apply_settings", None)
            if callable(apply):
                result = apply(new)
                if hasattr(result, "__await__"):
                    await result
                applied_live.append(name)
        previous_gc = chosen.apply_gc()
        return {
            "profile_applied": chosen.name,
            "previous_profile": old.profile,
            "changes": changes,
            "applied_live": sorted(applied_live),
            "gc_thresholds": list(chosen.gc_thresholds),
            "previous_gc_thresholds": list(previous_gc),
        }

    def run_performance_analysis_sync(self) -> dict[str, Any]:
        """Blocking :meth:`run_performance_analysis`; works inside a running event loop."""
        return run_sync(self.run_performance_analysis)

    def apply_optimizations_sync(self, profile: str = "balanced") -> dict[str, Any]:
        """Blocking :meth:`apply_optimizations`; works inside a running event loop."""
        return run_sync(self.apply_optimizations, profile)

    @staticmethod
    def profiles() -> list[str]:
        """Names of the available tuning profiles."""
        return list(PROFILES)


def _jsonable(value: Any) -> Any:
    """attrs snapshots -> dicts, recursively; leaves JSON-able values alone."""
    if attrs.has(type(value)):
        return {k: _jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


_default: PerformanceOptimizer | None = None
_default_lock = threading.Lock()


def get_performance_optimizer() -> PerformanceOptimizer:
    """The process-wide default optimizer, built from the environment on first call.

    Its parts open lazily; a closed default is replaced by a fresh one on the next call.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = PerformanceOptimizer(Settings.from_env())
        return _default
