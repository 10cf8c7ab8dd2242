"""Recommendations: rules over the parts' typed stats snapshots that say what to change.

Every rule reads named fields of a frozen stats object (``CacheStats.hit_rate``,
``DatabaseStats.waiting`` ...), so a renamed field is a type error, not a rule that
silently never fires. Each recommendation carries the figure that triggered it.
Index advice comes from PostgreSQL's ``pg_stat_user_tables``/``pg_stat_user_indexes``
(:func:`table_usage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..config import Settings

if TYPE_CHECKING:
    from ..cache import CacheStats
    from ..monitor import SystemSnapshot
    from ..pool import PoolStats
    from ..scraper import ScraperStats
    from .database import DatabaseOptimizer, DatabaseStats
    from .memory import MemoryGuardStats
    from .tasks import TaskStats

__all__ = [
    "IndexUsage",
    "Recommendation",
    "TableUsage",
    "recommend",
    "table_usage",
]

#: A table with at least this many live rows is "large" for the sequential-scan rule.
LARGE_TABLE_ROWS = 10_000
#: ... and is flagged when sequential scans read at least this many rows on average.
SEQ_ROWS_PER_SCAN = 5_000
#: Unused indexes are only noted on tables at least this big (small ones cost nothing).
UNUSED_INDEX_MIN_ROWS = 1_000


@attrs.frozen
class Recommendation:
    """One suggested change: which ``area``, how urgent, why, the setting to touch, and
    the figure (``metric`` = ``value``) that triggered it."""

    area: str
    severity: str  # "info" | "warning" | "critical"
    message: str
    setting: str | None = None
    suggested: Any = None
    metric: str | None = None
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as the analysis and the REST router return it."""
        return attrs.asdict(self)


@attrs.frozen
class TableUsage:
    """One row of ``pg_stat_user_tables``: scans and live rows of a table."""

    table: str
    seq_scan: int
    seq_tup_read: int
    idx_scan: int
    live_rows: int


@attrs.frozen
class IndexUsage:
    """One non-unique index from ``pg_stat_user_indexes`` with its scans and size."""

    table: str
    index: str
    idx_scan: int
    size_bytes: int
    table_rows: int


async def table_usage(
    db: DatabaseOptimizer, *, schema: str = "public"
) -> tuple[list[TableUsage], list[IndexUsage]]:
    """Read table and index usage of ``schema`` from PostgreSQL's statistics views.

    Args:
        db: an open or openable DatabaseOptimizer.
        schema: the schema to read.

    Returns:
        ``(tables, indexes)``; indexes lists non-unique, non-primary indexes only.

    Raises:
        DatabaseError: the server failed the query.
    """
    # Rows: the planner's estimate from the last ANALYZE (what the planner itself sees),
    # else the statistics collector's live-row counter for never-analysed tables.
    tables = await db.fetch(
        "SELECT s.relname AS table, coalesce(s.seq_scan, 0) AS seq_scan, "
        "coalesce(s.seq_tup_read, 0) AS seq_tup_read, coalesce(s.idx_scan, 0) AS idx_scan, "
        "CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint "
        "ELSE coalesce(s.n_live_tup, 0) END AS live_rows "
        "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
        "WHERE s.schemaname = %s",
        (schema,),
    )
    indexes = await db.fetch(
        "SELECT s.relname AS table, s.indexrelname AS index, coalesce(s.idx_scan, 0) AS idx_scan, "
        "pg_relation_size(s.indexrelid) AS size_bytes, "
        "CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint "
        "ELSE coalesce(t.n_live_tup, 0) END AS table_rows "
        "FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid "
        "JOIN pg_stat_user_tables t ON t.relid = s.relid JOIN pg_class c ON c.oid = s.relid "
        "WHERE s.schemaname = %s AND NOT i.indisunique AND NOT i.indisprimary",
        (schema,),
    )
    return [TableUsage(**row) for row in tables], [IndexUsage(**row) for row in indexes]


def recommend(
    settings: Settings,
    *,
    system: SystemSnapshot | None = None,
    cache: CacheStats | None = None,
    scraper: ScraperStats | None = None,
    chrome: PoolStats | None = None,
    database: DatabaseStats | None = None,
    tasks: TaskStats | None = None,
    memory: MemoryGuardStats | None = None,
    tables: Sequence[TableUsage] = (),
    indexes: Sequence[IndexUsage] = (),
) -> list[Recommendation]:
    """Apply every rule to the snapshots given; a part left out is not judged.

    Args:
        settings: the settings in force (thresholds and limits are read from them).
        system: a system sample.
        cache: the cache's stats.
        scraper: the scraper's stats.
        chrome: the Chrome pool's stats.
        database: the database's stats.
        tasks: the task queue's stats.
        memory: the memory guard's stats.
        tables: table usage from :func:`table_usage`.
        indexes: index usage from :func:`table_usage`.

    Returns:
        Recommendations, most severe first within each area.
    """
    out: list[Recommendation] = []
    if system is not None:
        out += _system(system, settings)
    if cache is not None:
        out += _cache(cache, settings)
    if scraper is not None:
        out += _scraper(scraper, settings)
    if chrome is not None:
        out += _chrome(chrome, settings)
    if database is not None:
        out += _database(database, settings)
    if tasks is not None:
        out += _tasks(tasks, settings)
    if memory is not None and memory.triggered:
        out.append(
            Recommendation(
                "memory",
                "warning",
                f"The memory guard fired {memory.triggered} time(s) near its "
                f"{memory.limit_mb} MB limit: keep the memory_focused profile or raise the limit.",
                "profile",
                "memory_focused",
                "memory_guard_triggered",
                memory.triggered,
            )
        )
    out += _indexes(tables, indexes)
    return out


def _system(s: SystemSnapshot, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    if s.memory_percent >= 90:
        out.append(
            Recommendation(
                "system",
                "critical",
                f"System memory is {s.memory_percent:.0f}% used: switch to the memory_focused "
                "profile and lower CHROME_POOL_SIZE.",
                "profile",
                "memory_focused",
                "memory_percent",
                s.memory_percent,
            )
        )
    elif s.memory_percent >= 80:
        out.append(
            Recommendation(
                "system",
                "warning",
                f"System memory is {s.memory_percent:.0f}% used: consider the memory_focused "
                "profile.",
                "profile",
                "memory_focused",
                "memory_percent",
                s.memory_percent,
            )
        )
    if s.cpu_percent >= 90:
        out.append(
            Recommendation(
                "system",
                "warning",
                f"CPU is {s.cpu_percent:.0f}% busy: lower ASYNC_MAX_CONCURRENT or "
                "CHROME_POOL_SIZE.",
                "ASYNC_MAX_CONCURRENT",
                max(1, settings.scraper.max_concurrent // 2),
                "cpu_percent",
                s.cpu_percent,
            )
        )
    return out


def _cache(c: CacheStats, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    lookups = c.hits + c.misses
    if lookups >= 100 and c.hit_rate < 0.5:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"Cache hit rate is {c.hit_rate:.0%} over {lookups} lookups: raise "
                "PERFORMANCE_CACHE_TTL or check that keys repeat.",
                "PERFORMANCE_CACHE_TTL",
                int(settings.cache.default_ttl * 2),
                "cache_hit_rate",
                c.hit_rate,
            )
        )
    if c.sets >= 100 and c.evictions / c.sets > 0.1:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"{c.evictions} of {c.sets} cache writes evicted an entry: raise "
                "PERFORMANCE_CACHE_MAX_SIZE.",
                "PERFORMANCE_CACHE_MAX_SIZE",
                settings.cache.max_size * 2,
                "cache_evictions",
                c.evictions,
            )
        )
    if c.errors > 0:
        out.append(
            Recommendation(
                "cache",
                "warning",
                f"The cache counted {c.errors} backend errors: check that its server is reachable.",
                metric="cache_errors",
                value=c.errors,
            )
        )
    return out


def _scraper(s: ScraperStats, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    if s.requests >= 50 and s.rate_limited / s.requests > 0.05:
        out.append(
            Recommendation(
                "scraper",
                "warning",
                f"{s.rate_limited} of {s.requests} requests were rate limited (429/503): "
                "lower ASYNC_MAX_CONCURRENT or add a delay.",
                "ASYNC_MAX_CONCURRENT",
                max(1, settings.scraper.max_concurrent - 2),
                "scraper_rate_limited",
                s.rate_limited,
            )
        )
    if s.requests >= 50 and s.failed / s.requests > 0.1:
        out.append(
            Recommendation(
                "scraper",
                "warning",
                f"{s.failed} of {s.requests} requests failed: check the error kinds in the "
                "scraper stats and ASYNC_TIMEOUT.",
                "ASYNC_TIMEOUT",
                settings.scraper.timeout * 2,
                "scraper_failed",
                s.failed,
            )
        )
    return out


def _chrome(p: PoolStats, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    if p.waits > 0 and p.utilization >= 0.9:
        out.append(
            Recommendation(
                "chrome",
                "warning",
                f"Every browser was busy and {p.waits} tasks waited: raise CHROME_POOL_SIZE "
                "if memory allows.",
                "CHROME_POOL_SIZE",
                settings.chrome.pool_size + 2,
                "chrome_waits",
                p.waits,
            )
        )
    if p.crashed > 0:
        out.append(
            Recommendation(
                "chrome",
                "info",
                f"{p.crashed} browsers crashed and were replaced: watch their memory "
                "(max_memory_mb) and the pages that crash them.",
                metric="chrome_crashed",
                value=p.crashed,
            )
        )
    return out


def _database(d: DatabaseStats, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    if d.waiting > 0 or d.wait_ms > 1000:
        out.append(
            Recommendation(
                "database",
                "warning",
                f"Requests waited {d.wait_ms} ms in all for a database connection "
                f"({d.waiting} waiting now): raise DB_POOL_SIZE or DB_MAX_OVERFLOW.",
                "DB_POOL_SIZE",
                settings.database.pool_size + 5,
                # The figure that crossed its line: requests waiting now, else total wait.
                "database_waiting" if d.waiting > 0 else "database_wait_ms",
                d.waiting if d.waiting > 0 else d.wait_ms,
            )
        )
    if d.connection_errors > 0:
        out.append(
            Recommendation(
                "database",
                "warning",
                f"{d.connection_errors} database connections failed: check DATABASE_URL and "
                "the server.",
                metric="database_connection_errors",
                value=d.connection_errors,
            )
        )
    return out


def _tasks(t: TaskStats, settings: Settings) -> list[Recommendation]:
    out: list[Recommendation] = []
    if t.rejected > 0 or t.wait_p95_ms > 1000:
        out.append(
            Recommendation(
                "tasks",
                "warning",
                f"Background tasks waited {t.wait_p95_ms:.0f} ms at p95 and {t.rejected} were "
                "refused by a full queue: raise tasks.workers.",
                "tasks.workers",
                settings.tasks.workers * 2,
                "tasks_rejected" if t.rejected > 0 else "tasks_wait_p95_ms",
                t.rejected if t.rejected > 0 else t.wait_p95_ms,
            )
        )
    finished = t.done + t.failed
    if finished >= 20 and t.failed / finished > 0.1:
        out.append(
            Recommendation(
                "tasks",
                "warning",
                f"{t.failed} of {finished} background tasks failed after their retries: read "
                "the leadperf.tasks log.",
                metric="tasks_failed",
                value=t.failed,
            )
        )
    return out


def _indexes(tables: Sequence[TableUsage], indexes: Sequence[IndexUsage]) -> list[Recommendation]:
    out: list[Recommendation] = []
    for t in tables:
        per_scan = t.seq_tup_read / t.seq_scan if t.seq_scan else 0.0
        if (
            t.live_rows >= LARGE_TABLE_ROWS
            and t.seq_scan > t.idx_scan
            and per_scan >= SEQ_ROWS_PER_SCAN
        ):
            out.append(
                Recommendation(
                    "database",
                    "warning",
                    f"Table {t.table} ({t.live_rows} rows) was read by {t.seq_scan} sequential "
                    f"scans ({per_scan:.0f} rows each) against {t.idx_scan} index scans: add an "
                    "index on the columns its queries filter or join on.",
                    metric=f"{t.table}.seq_scan",
                    value=t.seq_scan,
                )
            )
    for i in indexes:
        if i.idx_scan == 0 and i.table_rows >= UNUSED_INDEX_MIN_ROWS:
            out.append(
                Recommendation(
                    "database",
                    "info",
                    f"Index {i.index} on {i.table} ({i.size_bytes // 1024} KiB) has never been "
                    "scanned since statistics were reset: drop it if no query needs it (it "
                    "slows every write).",
                    metric=f"{i.index}.idx_scan",
                    value=0,
                )
            )
    return out
