"""The :class:`PerformanceOptimizer` facade: builds every part from one ``Settings``,
owns their lifecycle, reports their stats, checks the backends and applies profiles.

Sync use (``with PerformanceOptimizer() as perf:``) runs the parts on leadperf's shared
portal loop; ``perf.cache_sync``, ``perf.database_sync`` and ``perf.tasks_sync`` are
blocking fronts of those parts, and ``await perf.cache.get(...)`` from another event loop
(a notebook cell) is forwarded to the portal loop, so it works there too.

Length: a little over 600 lines because the facade's public surface (every part's
property, the lifecycle, checks, analysis and tuning) is one class users read; the
helpers it can lend out live in ``_parts``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import attrs

from .._core.lifecycle import AsyncResource, BlockingContext, State
from .._portal import get_portal, run_sync
from ..config import Settings
from ..errors import CacheUnavailableError, ConfigError, LeadperfError
from ..monitor import MetricsRegistry, SystemMonitor
from ._parts import (
    Blocking,
    cache_tiers,
    close_part,
    forward_if_foreign_loop,
    jsonable,
    ping_cache,
    ping_database,
    ping_scale,
    portal_bound,
    scale_part,
    scale_stats,
    trim_parts,
)
from .memory import MemoryGuard, MemoryReading, cgroup_memory, freeze_after_warmup
from .profiles import PROFILES, apply_to_parts, get_profile
from .recommend import Recommendation, recommend, table_usage

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ..cache import Cache
    from ..pool import ChromePool
    from ..scraper import AsyncScraper
    from .database import DatabaseOptimizer
    from .resources import ResourceOptimizer
    from .tasks import TaskOptimizer

__all__ = ["PerformanceOptimizer", "get_performance_optimizer"]

log = logging.getLogger("leadperf.optimizer")


class PerformanceOptimizer(BlockingContext, AsyncResource):
    """One object that builds, tunes, monitors and closes every leadperf part.

    Parts are built lazily from ``settings`` on first access (``perf.cache``,
    ``perf.scraper``, ``perf.chrome``, ``perf.resources``, ``perf.database``,
    ``perf.tasks``, ``perf.monitor``, ``perf.memory``); ones passed in are used as they are
    and still closed with the facade. Use ``async with PerformanceOptimizer(settings) as
    perf:`` in async code and ``with PerformanceOptimizer(settings) as perf:`` in scripts
    and notebooks (the sync form runs the parts on leadperf's shared background event
    loop, so it works inside a running loop too). A closed optimizer is never reopened.
    """

    # Parts are built (and may be used) before the facade opens; closing reaches them.
    _close_when_new: ClassVar[bool] = True

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
        self._parts: dict[str, Any] = {}
        self._entered: set[str] = set()
        self._sync_cm: AbstractContextManager[PerformanceOptimizer] | None = None
        self._on_portal = False
        self._tg: TaskGroup | None = None
        self._tg_task: int | None = None
        self._gc_before: tuple[int, int, int] | None = None
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
        if name in ("limiter", "dedup"):
            self.registry.register("scale", lambda: scale_stats(self._parts))
        elif callable(stats):
            self.registry.register(name, stats)
        return part

    def _part(self, name: str) -> Any:
        with self._lock:
            self._check_open()
            part = self._parts.get(name)
            if part is None:
                part = self._adopt(name, self._build(name))
        return forward_if_foreign_loop(part) if self._on_portal else part

    def _build(self, name: str) -> Any:
        s = self.settings
        if name == "cache":
            from ..cache import from_settings

            return from_settings(s)
        if name == "scraper":
            from ..scraper import AsyncScraper

            return AsyncScraper(
                settings=s,
                cache=self._raw("cache") if s.cache.enabled else None,
                limiter=self._raw("limiter") if s.scale.limiter_url else None,
                dedup=self._raw("dedup") if s.scale.dedup_url else None,
            )
        if name in ("limiter", "dedup"):
            return scale_part(name, s)
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

            cache = self._raw("cache") if s.database.enable_query_cache else None
            return DatabaseOptimizer(settings=s, cache=cache)
        if name == "tasks":
            from .tasks import TaskOptimizer

            return TaskOptimizer(settings=s)
        if name == "monitor":
            return SystemMonitor(settings=s)
        if name == "memory":
            return MemoryGuard(self._on_memory_pressure, settings=s)
        raise AssertionError(name)

    def _raw(self, name: str) -> Any:
        """The part itself (never the cross-loop forwarder), built if needed."""
        self._part(name)
        return self._parts[name]

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
    def tasks(self) -> TaskOptimizer:
        """The background task queue; open while the optimizer is open."""
        part: TaskOptimizer = self._part("tasks")
        return part

    @property
    def monitor(self) -> SystemMonitor:
        """The psutil system monitor."""
        part: SystemMonitor = self._part("monitor")
        return part

    @property
    def memory(self) -> MemoryGuard:
        """The memory guard (idle unless a limit is configured or the container has one)."""
        part: MemoryGuard = self._part("memory")
        return part

    @property
    def cache_sync(self) -> Any:
        """Blocking front of :attr:`cache`: ``perf.cache_sync.get("k")`` and so on."""
        return self._blocking("cache")

    @property
    def database_sync(self) -> Any:
        """Blocking front of :attr:`database`: ``perf.database_sync.fetch("SELECT 1")``."""
        return self._blocking("database")

    @property
    def tasks_sync(self) -> Any:
        """Blocking front of :attr:`tasks` (``submit`` returns a handle; ``join`` waits)."""
        return self._blocking("tasks")

    def _blocking(self, name: str) -> Blocking:
        if self._state is State.OPEN and not self._on_portal:
            raise LeadperfError(
                f"this PerformanceOptimizer was opened with 'async with': use "
                f"'await perf.{name}...' (the *_sync fronts are for 'with' blocks and scripts)"
            )
        return Blocking(self._raw(name), name)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> Self:
        """Open the cache, the scraper and the task queue; apply the profile's GC
        thresholds; start system sampling and the memory guard when enabled.

        Returns:
            The optimizer itself.

        Raises:
            ClosedError: the optimizer was closed.
            CacheUnavailableError: the cache's server failed while opening, with
                ``raise_errors`` on (what opened is closed again).
        """
        return await super().open()

    async def _aopen(self) -> None:
        try:
            for name in ("cache", "scraper", "tasks"):
                part = self._parts.get(name) or self._raw(name)
                await part.__aenter__()
                self._entered.add(name)
            s = self.settings
            if s.monitoring.enabled and s.monitoring.system_monitoring:
                monitor = self._raw("monitor")
                self.registry.register("system", monitor.latest_or_sample)
                await monitor.start()
            self._gc_before = get_profile(s.profile).apply_gc()
            guard: MemoryGuard = self._raw("memory")
            if guard.enabled:
                self._tg = anyio.create_task_group()
                await self._tg.__aenter__()
                self._tg_task = anyio.get_current_task().id
                self._tg.start_soon(guard.run, name="leadperf-memory-guard")
            if s.memory.gc_freeze:
                freeze_after_warmup()
        except BaseException:
            # What opened is closed again, and a failed optimizer is not reopened.
            self._state = State.CLOSED
            await self._aclose()
            raise

    async def aclose(self) -> None:
        """Close every part this optimizer built or was given; idempotent.

        Every part is closed even when one fails.

        Raises:
            Exception: the first failure of a part's close, after the rest closed.
        """
        await super().aclose()

    async def _aclose(self) -> None:
        with self._lock:
            parts = dict(self._parts)
        errors: list[BaseException] = []
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            # A task group is left by the task that entered it (see AsyncScraper too).
            if anyio.get_current_task().id == self._tg_task:
                await tg.__aexit__(None, None, None)
        # Reverse build order: users of the cache close before the cache.
        order = (
            "monitor", "tasks", "scraper", "limiter", "dedup", "chrome", "database", "resources",
            "cache",
        )  # fmt: skip
        for name in order:
            part = parts.get(name)
            if part is None:
                continue
            try:
                await close_part(part, entered=name in self._entered)
            except Exception as exc:  # close the rest, then report the first failure
                errors.append(exc)
            self.registry.unregister(name)
        self.registry.unregister("system")
        self.registry.unregister("scale")
        if (
            self._gc_before is not None
            and gc.get_threshold() == get_profile(self.settings.profile).gc_thresholds
        ):
            gc.set_threshold(*self._gc_before)  # still ours: give the host its own back
        if errors:
            raise errors[0]

    def _enter(self) -> None:
        # ``with``: enter and exit in one task on the shared portal's loop: parts may hold
        # task groups, whose scopes must be left by the task that entered them.
        self._on_portal = True
        cm = get_portal().wrap_async_context_manager(self)
        cm.__enter__()
        self._sync_cm = cm

    def _exit(self) -> None:
        self.close()

    def close(self) -> None:
        """Blocking :meth:`aclose` (runs on leadperf's shared background loop)."""
        cm, self._sync_cm = self._sync_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)
        else:
            run_sync(self.aclose)

    # -- checks, analysis and metrics -----------------------------------------------------

    @portal_bound
    async def check_backends(self) -> dict[str, dict[str, Any]]:
        """Ping every configured backend for real (a cache lookup, ``SELECT 1``, and a
        round trip to the shared limiter's and dedup set's stores when configured).

        Returns:
            ``{"cache": {...}, "database": {...}}`` (plus ``"limiter"``/``"dedup"`` when
            ``settings.scale`` names them), each with ``configured``, ``ok``, ``backend``,
            ``latency_ms`` and ``error`` (a message without credentials).
        """
        checks = {"cache": await ping_cache(self._raw("cache"))}
        if self.settings.database.url:
            checks["database"] = await ping_database(self._raw("database"))
        else:
            checks["database"] = {
                "configured": False,
                "ok": True,
                "backend": None,
                "latency_ms": None,
                "error": None,
            }
        scale = self.settings.scale
        for name, url in (("limiter", scale.limiter_url), ("dedup", scale.dedup_url)):
            if url:
                checks[name] = await ping_scale(self._raw(name), name, url)
        return checks

    @portal_bound
    async def status(self) -> dict[str, Any]:
        """What ``leadperf status`` and ``GET /status`` show: host and process figures,
        container memory when limited, each backend's check, the profile, and ``ok``
        (False when a configured backend is down)."""
        snap = await self.monitor.sample_async()
        container = await anyio.to_thread.run_sync(cgroup_memory)
        backends = await self.check_backends()
        return {
            "ok": all(b["ok"] for b in backends.values()),
            "profile": self.settings.profile,
            "timestamp": snap.timestamp,
            "cpu_percent": snap.cpu_percent,
            "memory": {
                "percent": snap.memory_percent,
                "used_mb": snap.memory_used_mb,
                "available_mb": snap.memory_available_mb,
                "container_used_mb": None if container is None else round(container[0] / 2**20, 1),
                "container_limit_mb": None if container is None else round(container[1] / 2**20, 1),
            },
            "process": {
                "rss_mb": snap.process_rss_mb,
                "threads": snap.process_threads,
                "children": snap.children,
                "children_rss_mb": snap.children_rss_mb,
            },
            "backends": backends,
        }

    @portal_bound
    async def clear_cache(self, pattern: str | None = None) -> int:
        """Remove the cache's keys matching a glob inside its namespace.

        Args:
            pattern: a glob (``*`` any run, ``?`` one character), or None for every key.

        Returns:
            How many live entries went.

        Raises:
            CacheKeyError: a bad pattern (before any I/O).
            CacheUnavailableError: the cache's server did not answer (caches count such
                failures rather than raise them; this reports it).
        """
        tiers = cache_tiers(self._raw("cache"))
        before = sum(t.stats().errors for t in tiers)
        removed: int = await self._raw("cache").clear(pattern)
        if sum(t.stats().errors for t in tiers) > before:
            raise CacheUnavailableError("the cache's server did not answer; nothing was cleared")
        return removed

    @portal_bound
    async def metrics(self) -> dict[str, dict[str, float]]:
        """Every registered source's numbers, with a fresh system sample."""
        monitor = self._raw("monitor")
        await monitor.sample_async()
        self.registry.register("system", monitor.latest_or_sample)
        self._raw("cache")  # registered on build: its counters are always part of metrics
        if self.settings.database.url:
            self._raw("database")
        if "memory" in self._parts:
            self.registry.register("memory", self._parts["memory"].stats)
        for name in ("limiter", "dedup"):
            if getattr(self.settings.scale, f"{name}_url"):
                self._raw(name)  # its counters are part of metrics, under "scale"
        return self.registry.collect()

    @portal_bound
    async def metrics_prometheus(self) -> str:
        """:meth:`metrics` as Prometheus text exposition (via ``prometheus_client``)."""
        await self.metrics()
        return self.registry.to_prometheus()

    @portal_bound
    async def recommendations(self, *, indexes: bool = True) -> list[Recommendation]:
        """Recommendations from every built part's stats; with ``indexes``, also table and
        index advice from PostgreSQL's statistics when a database is configured."""
        snapshot = await self.monitor.sample_async()

        def stats(name: str) -> Any:
            part = self._parts.get(name)
            return part.stats() if part is not None else None

        tables: list[Any] = []
        index_rows: list[Any] = []
        if indexes and self.settings.database.url:
            try:
                tables, index_rows = await table_usage(self._raw("database"))
            except Exception as exc:  # advice must not fail the analysis
                log.warning("could not read table statistics: %s", type(exc).__name__)
        return recommend(
            self.settings,
            system=snapshot,
            cache=self._raw("cache").stats(),
            scraper=stats("scraper"),
            chrome=stats("chrome"),
            database=stats("database"),
            tasks=stats("tasks"),
            memory=stats("memory"),
            tables=tables,
            indexes=index_rows,
        )

    @portal_bound
    async def run_performance_analysis(self) -> dict[str, Any]:
        """Sample the system and every built part; return numbers and recommendations.

        Keys: ``timestamp``, ``profile``, ``system``, ``cache_performance`` (with
        ``hit_rate`` in [0, 1]), ``scraper_performance``, ``chrome_pool``, ``database``,
        ``resources``, ``tasks``, ``memory``, ``scale`` (the shared limiter's and dedup
        set's stats, each None when not configured; the limiter's ``shared`` is False while
        it runs on local limits), ``recommendations`` (list of dicts) and ``metrics``
        (every registered source, flattened).
        """
        self._check_open()
        recommendations = await self.recommendations()
        parts = dict(self._parts)

        def part_stats(name: str) -> dict[str, Any] | None:
            part = parts.get(name)
            if part is None or not callable(getattr(part, "stats", None)):
                return None
            stats: dict[str, Any] = jsonable(part.stats())
            return stats

        analysis: dict[str, Any] = {
            "timestamp": time.time(),
            "profile": self.settings.profile,
            "system": jsonable(self._raw("monitor").latest_or_sample()),
            "cache_performance": jsonable(self._raw("cache").stats()),
            "scraper_performance": part_stats("scraper"),
            "chrome_pool": part_stats("chrome"),
            "database": part_stats("database"),
            "resources": part_stats("resources"),
            "tasks": part_stats("tasks"),
            "memory": part_stats("memory"),
            "scale": scale_stats(parts),
            "recommendations": [r.as_dict() for r in recommendations],
        }
        analysis["metrics"] = await self.metrics()
        return analysis

    # -- tuning ---------------------------------------------------------------------------

    @portal_bound
    async def apply_optimizations(self, profile: str = "balanced") -> dict[str, Any]:
        """Switch to ``profile``: new settings, GC thresholds, and live limits on the parts
        already open. Parts not yet built pick the new settings up when built.

        Args:
            profile: ``"balanced"``, ``"memory_focused"`` or ``"performance_focused"``.

        Returns:
            ``profile_applied``, ``previous_profile``, ``changes`` (``section.key`` ->
            ``[old, new]``), ``parts`` (per open part: ``live`` and ``on_reopen`` changes),
            ``applied_live`` (parts changed live), ``gc_thresholds`` and
            ``previous_gc_thresholds``.

        Raises:
            ConfigError: unknown profile (the message names the three).
            ClosedError: the optimizer was closed.
        """
        self._check_open()
        chosen = get_profile(profile)
        old = self.settings
        new = chosen.settings(old)
        changes: dict[str, list[Any]] = {}
        for section in (
            "cache",
            "database",
            "monitoring",
            "scraper",
            "chrome",
            "resources",
            "memory",
            "tasks",
        ):
            before, after = getattr(old, section), getattr(new, section)
            for field in attrs.fields(type(before)):
                a, b = getattr(before, field.name), getattr(after, field.name)
                if a != b and "url" not in field.name:
                    changes[f"{section}.{field.name}"] = [a, b]
        self.settings = new
        report = await apply_to_parts(dict(self._parts), old, new)
        previous_gc = chosen.apply_gc()
        return {
            "profile_applied": chosen.name,
            "previous_profile": old.profile,
            "changes": changes,
            "parts": report,
            "applied_live": sorted(name for name, r in report.items() if r["live"]),
            "gc_thresholds": list(chosen.gc_thresholds),
            "previous_gc_thresholds": list(previous_gc),
        }

    async def _on_memory_pressure(self, reading: MemoryReading) -> None:
        """The memory guard's action: memory_focused, then trim caches and the pool."""
        if self.settings.profile != "memory_focused":
            await self.apply_optimizations("memory_focused")
        trimmed = await trim_parts(dict(self._parts))
        collected = await anyio.to_thread.run_sync(gc.collect)
        log.warning(
            "memory guard at %.0f%%: trimmed %s; the collector freed %d objects",
            reading.ratio * 100,
            ", ".join(f"{k}={v}" for k, v in trimmed.items()) or "nothing",
            collected,
        )

    def run_performance_analysis_sync(self) -> dict[str, Any]:
        """Blocking :meth:`run_performance_analysis`; works inside a running event loop."""
        return run_sync(self.run_performance_analysis)

    def apply_optimizations_sync(self, profile: str = "balanced") -> dict[str, Any]:
        """Blocking :meth:`apply_optimizations`; works inside a running event loop."""
        return run_sync(self.apply_optimizations, profile)

    def status_sync(self) -> dict[str, Any]:
        """Blocking :meth:`status`."""
        return run_sync(self.status)

    @staticmethod
    def profiles() -> list[str]:
        """Names of the available tuning profiles."""
        return list(PROFILES)


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
