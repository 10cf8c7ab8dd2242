"""Recommendation rules over typed stats: each one fires on its figure and stays quiet
without it; the database rules also fire from a real pool and real table statistics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import attrs
import pytest

from leadperf import ChromePool, PerformanceOptimizer, Settings
from leadperf.cache import CacheStats
from leadperf.monitor import SystemSnapshot
from leadperf.optimize.recommend import IndexUsage, TableUsage, recommend
from leadperf.optimize.tasks import TaskOptimizer

SETTINGS = Settings()


@pytest.fixture(scope="module")
def base() -> Iterator[dict[str, Any]]:
    """Quiet snapshots of every part, taken from real (idle) parts."""
    from leadperf import AsyncScraper
    from leadperf.optimize.database import DatabaseOptimizer
    from leadperf.optimize.memory import MemoryGuard

    async def noop(reading: Any) -> None:
        pass

    pool = ChromePool(settings=SETTINGS)
    yield {
        "system": SystemSnapshot(
            timestamp=0.0,
            cpu_percent=10.0,
            memory_percent=40.0,
            memory_used_mb=1.0,
            memory_available_mb=1.0,
            process_rss_mb=1.0,
            process_cpu_percent=1.0,
            process_threads=1,
            process_open_fds=1,
            children=0,
            children_rss_mb=0.0,
        ),
        "cache": CacheStats(backend="memory", hits=900, misses=100, hit_rate=0.9, sets=200),
        "scraper": AsyncScraper(settings=SETTINGS).stats(),
        "chrome": pool.stats(),
        "database": DatabaseOptimizer("postgresql://u@127.0.0.1/x", settings=SETTINGS).stats(),
        "tasks": TaskOptimizer(settings=SETTINGS).stats(),
        "memory": MemoryGuard(noop, settings=SETTINGS).stats(),
    }
    pool.close()


# (part, changes that make the rule fire, the metric it reports, severity)
RULES = [
    ("system", {"memory_percent": 95.0}, "memory_percent", "critical"),
    ("system", {"memory_percent": 85.0}, "memory_percent", "warning"),
    ("system", {"cpu_percent": 97.0}, "cpu_percent", "warning"),
    ("cache", {"hits": 20, "misses": 180, "hit_rate": 0.1}, "cache_hit_rate", "warning"),
    ("cache", {"sets": 200, "evictions": 50}, "cache_evictions", "warning"),
    ("cache", {"errors": 3}, "cache_errors", "warning"),
    ("scraper", {"requests": 100, "rate_limited": 20}, "scraper_rate_limited", "warning"),
    ("scraper", {"requests": 100, "failed": 30}, "scraper_failed", "warning"),
    ("chrome", {"waits": 4, "utilization": 1.0}, "chrome_waits", "warning"),
    ("chrome", {"crashed": 2}, "chrome_crashed", "info"),
    ("database", {"waiting": 2}, "database_waiting", "warning"),
    ("database", {"wait_ms": 5_000}, "database_wait_ms", "warning"),
    ("database", {"connection_errors": 1}, "database_connection_errors", "warning"),
    ("tasks", {"wait_p95_ms": 2_500.0}, "tasks_wait_p95_ms", "warning"),
    ("tasks", {"rejected": 5}, "tasks_rejected", "warning"),
    ("tasks", {"done": 20, "failed": 10}, "tasks_failed", "warning"),
    ("memory", {"triggered": 1, "limit_mb": 512.0}, "memory_guard_triggered", "warning"),
]


@pytest.mark.parametrize(("part", "changes", "metric", "severity"), RULES)
def test_each_rule_fires_on_its_figure(
    base: dict[str, Any], part: str, changes: dict[str, Any], metric: str, severity: str
) -> None:
    loud = attrs.evolve(base[part], **changes)
    fired = recommend(SETTINGS, **{part: loud})
    assert [(r.metric, r.severity) for r in fired] == [(metric, severity)]
    assert fired[0].value is not None
    assert fired[0].value > 0  # the figure that triggered it travels with it


@pytest.mark.parametrize("part", sorted({r[0] for r in RULES}))
def test_each_part_is_quiet_on_healthy_figures(base: dict[str, Any], part: str) -> None:
    assert recommend(SETTINGS, **{part: base[part]}) == []


def test_thresholds_are_not_crossed_by_small_samples(base: dict[str, Any]) -> None:
    # Few lookups or requests never judge a rate: 10 misses out of 10 is not a trend.
    cold = attrs.evolve(base["cache"], hits=0, misses=10, hit_rate=0.0)
    few = attrs.evolve(base["scraper"], requests=10, failed=5, rate_limited=5)
    assert recommend(SETTINGS, cache=cold, scraper=few) == []


def test_index_rules() -> None:
    big = TableUsage("leads", seq_scan=40, seq_tup_read=40 * 50_000, idx_scan=2, live_rows=50_000)
    small = TableUsage("tags", seq_scan=900, seq_tup_read=900 * 30, idx_scan=0, live_rows=30)
    indexed = TableUsage(
        "events", seq_scan=3, seq_tup_read=3 * 50_000, idx_scan=90, live_rows=50_000
    )
    unused = IndexUsage(
        "leads", "leads_note_idx", idx_scan=0, size_bytes=4096 * 1024, table_rows=50_000
    )
    used = IndexUsage("leads", "leads_email_idx", idx_scan=7, size_bytes=1024, table_rows=50_000)
    fired = recommend(SETTINGS, tables=[big, small, indexed], indexes=[unused, used])
    assert [(r.metric, r.severity) for r in fired] == [
        ("leads.seq_scan", "warning"),
        ("leads_note_idx.idx_scan", "info"),
    ]
    assert "50000 rows" in fired[0].message
    assert "4096 KiB" in fired[1].message


@pytest.mark.postgres
@pytest.mark.anyio
async def test_database_wait_rule_fires_from_a_real_pool(database_url: str) -> None:
    settings = Settings().evolve(
        database={"url": database_url, "pool_size": 1, "max_overflow": 0},
        monitoring={"enabled": False},
    )
    async with PerformanceOptimizer(settings) as perf:
        db = perf.database
        await db.fetch("SELECT 1")
        seen: list[str | None] = []

        async def sleeper() -> None:
            await db.fetch("SELECT pg_sleep(0.4)")

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(sleeper)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                await anyio.sleep(0.02)
                if db.stats().waiting > 0:
                    recs = await perf.recommendations(indexes=False)
                    seen = [r.metric for r in recs if r.area == "database"]
                    break
        assert "database_waiting" in seen
        assert db.stats().waiting == 0


@pytest.mark.postgres
@pytest.mark.anyio
async def test_unused_index_note_from_real_statistics(database_url: str, unique_name: str) -> None:
    settings = Settings().evolve(database={"url": database_url}, monitoring={"enabled": False})
    async with PerformanceOptimizer(settings) as perf:
        db = perf.database
        await db.execute(
            f"CREATE TABLE {unique_name} AS SELECT g AS id, md5(g::text) AS note "
            "FROM generate_series(1, 3000) g"
        )
        try:
            await db.execute(f"CREATE INDEX {unique_name}_note ON {unique_name} (note)")
            await db.execute(f"ANALYZE {unique_name}")
            await db.execute("SELECT pg_stat_force_next_flush()")
            notes: list[str] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not notes:
                recs = await perf.recommendations()
                notes = [r.message for r in recs if r.metric == f"{unique_name}_note.idx_scan"]
                await anyio.sleep(0.2)
            assert notes, "the unused index was never reported"
            assert f"Index {unique_name}_note on {unique_name}" in notes[0]
            # Once a query uses the index, the note goes away.
            await db.fetch(f"SELECT id FROM {unique_name} WHERE note = 'x'")
            await db.execute("SELECT pg_stat_force_next_flush()")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and notes:
                recs = await perf.recommendations()
                notes = [r.message for r in recs if r.metric == f"{unique_name}_note.idx_scan"]
                await anyio.sleep(0.2)
            assert not notes
        finally:
            await db.execute(f"DROP TABLE {unique_name}")
