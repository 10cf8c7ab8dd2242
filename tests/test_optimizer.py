from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from leadperf import ClosedError, ConfigError, LeadperfError, PerformanceOptimizer, Settings
from leadperf.cache import MemoryCache
from leadperf.cli import main as cli_main
from leadperf.optimize import PROFILES, get_performance_optimizer


class _Handler(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        data = f"<p>{self.path}</p>".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    _Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings() -> Settings:
    return Settings().evolve(monitoring={"metrics_interval": 0.05})


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.mark.anyio
async def test_async_facade_caches_scrapes_and_reports(site: str, settings: Settings) -> None:
    urls = [f"{site}/p/{i}" for i in range(10)]
    async with PerformanceOptimizer(settings) as perf:
        await perf.cache.set("key", {"any": "json-able"}, ttl=3600)
        assert await perf.cache.get("key") == {"any": "json-able"}
        first = await perf.scraper.scrape_batch(urls)
        again = await perf.scraper.scrape_batch(urls)
        assert [r.url for r in first] == urls
        assert all(r.ok for r in first)
        assert all(r.from_cache for r in again)
        assert sorted(_Handler.seen) == sorted(f"/p/{i}" for i in range(10))  # once each

        analysis = await perf.run_performance_analysis()
        hit_rate = analysis["cache_performance"]["hit_rate"]
        assert 0.0 < hit_rate <= 1.0
        assert analysis["scraper_performance"] is not None
        assert analysis["system"]["process_rss_mb"] > 0
        assert "cache" in analysis["metrics"]
        json.dumps(analysis)  # JSON-able all the way down
    assert perf.closed
    with pytest.raises(ClosedError):
        _ = perf.cache


@pytest.mark.anyio
async def test_apply_optimizations_changes_settings_and_gc(settings: Settings) -> None:
    base = settings.evolve(database={"url": "postgresql://u:pw@127.0.0.1:1/x"})
    async with PerformanceOptimizer(base) as perf:
        result = await perf.apply_optimizations("performance_focused")
        assert result["profile_applied"] == "performance_focused"
        assert result["previous_profile"] == "balanced"
        assert result["changes"]["cache.max_size"] == [10_000, 50_000]
        assert perf.settings.profile == "performance_focused"
        assert perf.settings.scraper.max_concurrent == 10
        assert perf.settings.database.url == base.database.url  # explicit values kept
        assert gc.get_threshold() == PROFILES["performance_focused"].gc_thresholds
        with pytest.raises(ConfigError, match="unknown profile"):
            await perf.apply_optimizations("turbo")


def test_sync_facade_works_inside_running_loop(settings: Settings) -> None:
    async def notebook_cell() -> dict[str, object]:
        # A running loop in this thread, as in Jupyter: the sync API must still work.
        with PerformanceOptimizer(settings) as perf:
            analysis = perf.run_performance_analysis_sync()
            applied = perf.apply_optimizations_sync("memory_focused")
            assert applied["profile_applied"] == "memory_focused"
            return analysis

    analysis = asyncio.run(notebook_cell())
    assert 0.0 <= analysis["cache_performance"]["hit_rate"] <= 1.0  # type: ignore[index]


@pytest.mark.anyio
async def test_recommendations_follow_the_numbers(settings: Settings) -> None:
    async with PerformanceOptimizer(settings) as perf:
        for i in range(120):
            await perf.cache.get(f"missing-{i}")
        analysis = await perf.run_performance_analysis()
    areas = {r["area"] for r in analysis["recommendations"]}
    assert "cache" in areas
    msg = next(r for r in analysis["recommendations"] if r["area"] == "cache")
    assert msg["setting"] == "PERFORMANCE_CACHE_TTL"


def test_database_needs_a_url(settings: Settings) -> None:
    perf = PerformanceOptimizer(settings.evolve(database={"url": None}))
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        _ = perf.database
    perf.close()


def test_default_optimizer_is_shared_and_replaced_after_close(tmp_env: pytest.MonkeyPatch) -> None:
    first = get_performance_optimizer()
    assert get_performance_optimizer() is first
    first.close()
    assert get_performance_optimizer() is not first


def test_bad_settings_type() -> None:
    with pytest.raises(ConfigError, match="Settings"):
        PerformanceOptimizer({"profile": "balanced"})  # type: ignore[arg-type]


def test_cli_settings_masks_passwords(
    capsys: pytest.CaptureFixture[str], tmp_env: pytest.MonkeyPatch
) -> None:
    tmp_env.setenv("DATABASE_URL", "postgresql://lead:hunter2@127.0.0.1/x")
    assert cli_main(["--profile", "memory_focused", "settings"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["profile"] == "memory_focused"
    assert data["database"]["url"] == "postgresql://lead:***@127.0.0.1/x"
    assert "hunter2" not in out


def test_cli_errors_and_profiles(
    capsys: pytest.CaptureFixture[str], tmp_env: pytest.MonkeyPatch
) -> None:
    tmp_env.setenv("ASYNC_MAX_CONCURRENT", "zero")
    assert cli_main(["settings"]) == 2
    assert "ASYNC_MAX_CONCURRENT" in capsys.readouterr().err
    tmp_env.delenv("ASYNC_MAX_CONCURRENT")
    assert cli_main(["profiles"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(PROFILES)


def test_cli_scrape_and_metrics(
    site: str, capsys: pytest.CaptureFixture[str], tmp_env: pytest.MonkeyPatch
) -> None:
    assert cli_main(["scrape", f"{site}/a", f"{site}/b", "not a url"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["ok"] for line in lines] == [True, True, False]
    assert sorted(_Handler.seen) == ["/a", "/b"]
    assert cli_main(["metrics", "--prometheus"]) == 0
    out = capsys.readouterr().out
    assert "leadperf_system_process_rss_mb " in out
    assert "leadperf_system_memory_percent " in out


@pytest.mark.postgres
@pytest.mark.anyio
async def test_facade_database_upserts_and_reports_pool(
    settings: Settings, database_url: str, unique_name: str
) -> None:
    s = settings.evolve(database={"url": database_url, "pool_size": 1, "max_overflow": 1})
    async with PerformanceOptimizer(s) as perf:
        db = perf.database
        await db.execute(f"CREATE TABLE {unique_name} (email text PRIMARY KEY, score int)")
        try:
            rows = [{"email": f"lead{i}@example.com", "score": i} for i in range(500)]
            result = await db.bulk_upsert(unique_name, rows, key=("email",))
            assert (result.inserted, result.updated) == (500, 0)
            counted = await db.fetch(f"SELECT count(*) AS n, sum(score) AS s FROM {unique_name}")
            assert counted == [{"n": 500, "s": sum(range(500))}]
            analysis = await perf.run_performance_analysis()
            assert analysis["database"] is not None
            assert "database" in analysis["metrics"]
        finally:
            await db.execute(f"DROP TABLE {unique_name}")
    assert db.closed


def test_log_level_applies_to_leadperf_logger_only(settings: Settings) -> None:
    lp, root = logging.getLogger("leadperf"), logging.getLogger()
    before_lp, before_root = lp.level, root.level
    try:
        perf = PerformanceOptimizer(settings.evolve(log_level="DEBUG"))
        assert lp.level == logging.DEBUG
        assert root.level == before_root  # the host owns the rest of logging
        perf.close()
    finally:
        lp.setLevel(before_lp)


# -- profiles reach open parts --------------------------------------------------------------


@pytest.mark.anyio
async def test_profiles_change_live_parts_and_report_per_part(settings: Settings) -> None:
    async with PerformanceOptimizer(settings) as perf:
        for i in range(3000):
            await perf.cache.set(f"k{i}", i)
        fast = await perf.apply_optimizations("performance_focused")
        assert perf.cache.default_ttl == 4 * 3600  # type: ignore[attr-defined]  # 4 h, live
        assert perf.settings.chrome.pool_size > Settings().chrome.pool_size
        assert perf.settings.database.pool_size > Settings().database.pool_size
        assert perf.settings.cache.pool_max_size > Settings().cache.pool_max_size
        assert fast["parts"]["cache"]["live"]["default_ttl"] == [3600.0, 14400.0]
        assert fast["parts"]["scraper"]["live"]["max_concurrent"] == [5, 10]
        assert fast["parts"]["scraper"]["on_reopen"]["max_connections"] == [100, 200]
        assert perf.scraper.max_concurrent == 10

        small = await perf.apply_optimizations("memory_focused")
        threshold = gc.get_threshold()
        assert threshold[0] < 700  # CPython's default young threshold: collects more often
        assert threshold[1] < 10
        assert perf.cache.max_size == 2_000  # type: ignore[attr-defined]
        assert small["parts"]["cache"]["live"]["max_size"] == [50_000, 2_000]
        # 3000 entries over the new bound of 2000: the live cache shrinks now, not later,
        # by its least recently used 1000 (the 2000 most recent stay).
        assert small["parts"]["cache"]["entries_dropped"] == 1000
        assert perf.cache.stats().size == 2000
        assert perf.cache.stats().evictions == 1000
        assert await perf.cache.get("k0") is None
        assert await perf.cache.get("k2999") == 2999
        assert "compression_threshold" in small["parts"]["cache"]["on_reopen"]
        assert small["parts"]["tasks"]["on_reopen"]["workers"] == [8, 2]
        assert set(small["applied_live"]) >= {"cache", "scraper", "tasks"}
        await perf.cache.set("one-more", 1)
        assert perf.cache.stats().size is not None


@pytest.mark.anyio
async def test_gc_thresholds_follow_the_profile_and_are_given_back(settings: Settings) -> None:
    before = gc.get_threshold()
    async with PerformanceOptimizer(settings.evolve(profile="performance_focused")):
        assert gc.get_threshold() == PROFILES["performance_focused"].gc_thresholds
        assert gc.get_freeze_count() > 0  # warm-up objects frozen once per process
    assert gc.get_threshold() == before


@pytest.mark.anyio
async def test_memory_guard_applies_memory_focused_and_trims(
    settings: Settings, reliability: Any
) -> None:
    # A limit far below this process's real RSS: the guard must act on its first check.
    s = settings.evolve(memory={"limit_mb": 1.0, "check_interval": 0.05})
    perf = PerformanceOptimizer(s)
    for i in range(5000):  # filled before the guard starts (it checks as the facade opens)
        await perf.cache.set(f"lead:{i}", {"i": i})
    async with perf:
        with anyio.fail_after(10):
            while perf.memory.stats().triggered == 0:
                await anyio.sleep(0.02)
            # The trim follows the profile switch: down to memory_focused's bound, least
            # recently used first.
            while (perf.cache.stats().size or 0) > PROFILES["memory_focused"].settings(
                s
            ).cache.max_size:
                await anyio.sleep(0.02)
        stats = perf.memory.stats()
        size_after = perf.cache.stats().size
        evicted = perf.cache.stats().evictions
        assert size_after == 2000
        assert evicted == 3000
        assert await perf.cache.get("lead:4999") == {"i": 4999}  # the most recent stay
        assert perf.settings.profile == "memory_focused"
        assert gc.get_threshold() == PROFILES["memory_focused"].gc_thresholds
        assert stats.source == "configured"
        assert stats.used_mb > 1.0
        assert stats.triggered == 1  # once per crossing, not once per check
        analysis = await perf.run_performance_analysis()
        assert analysis["memory"]["triggered"] == 1
        assert any(r["metric"] == "memory_guard_triggered" for r in analysis["recommendations"])
    reliability.record(
        "memory",
        "process RSS above the configured memory limit",
        "guard applies memory_focused, trims the live cache, fires once per crossing",
        f"used {stats.used_mb} MB of {stats.limit_mb} MB; triggered {stats.triggered}; "
        f"cache trimmed from 5000 to {size_after} entries ({evicted} LRU evictions)",
    )


@pytest.mark.anyio
async def test_memory_guard_closes_idle_chrome_instances_never_a_busy_one(
    settings: Settings, chrome_paths: tuple[str, str], reliability: Any
) -> None:
    import psutil

    from leadperf.pool import ChromePool

    # A limit far below this process's real RSS: the guard acts on its first check.
    s = settings.evolve(memory={"limit_mb": 1.0, "check_interval": 0.05})
    binary, driver_path = chrome_paths
    pool = ChromePool(pool_size=2, chrome_binary=binary, driver_path=driver_path, settings=s)
    perf = PerformanceOptimizer(s, chrome=pool)
    # Two instances before the guard starts: one lent to a task, one idle.
    held = await anyio.to_thread.run_sync(pool.acquire, "held")
    other = await anyio.to_thread.run_sync(pool.acquire, "other")
    await anyio.to_thread.run_sync(pool.release, "other", other)
    busy = next(i for i in pool.stats().instances if i.busy)
    idle = next(i for i in pool.stats().instances if not i.busy)
    assert busy.driver_pid is not None
    assert idle.driver_pid is not None
    busy_root, idle_root = psutil.Process(busy.driver_pid), psutil.Process(idle.driver_pid)
    busy_tree = [busy_root, *busy_root.children(recursive=True)]
    idle_tree = [idle_root, *idle_root.children(recursive=True)]

    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    try:
        async with perf:
            with anyio.fail_after(30):
                while pool.stats().size > 1 or any(alive(p) for p in idle_tree):
                    await anyio.sleep(0.05)
            assert perf.memory.stats().triggered == 1
            assert [i.browser_pid for i in pool.stats().instances] == [busy.browser_pid]
            # The lent instance's chromedriver and browser are what a trim would kill; its
            # helper children (spare renderers, utility processes) come and go on their own.
            assert busy.browser_pid is not None
            lent = (busy_root, psutil.Process(busy.browser_pid))
            assert all(alive(p) for p in lent), "the lent browser is never trimmed"
            await anyio.to_thread.run_sync(held.get, "data:text/html,<title>kept</title>")
            assert held.title == "kept"
            await anyio.to_thread.run_sync(pool.release, "held", held)
    finally:
        await pool.aclose()
    assert not any(alive(p) for p in busy_tree)  # closed with the facade
    reliability.record(
        "memory",
        "process RSS above the configured memory limit with a Chrome pool of 2 (1 lent)",
        "guard closes every idle Chrome instance with its process tree, never a lent one",
        f"idle tree of {len(idle_tree)} processes gone, lent tree of {len(busy_tree)} "
        f"processes kept and still serving its task",
    )


def test_cgroup_limits_are_read_from_v2_files(tmp_path: Any) -> None:
    from leadperf.optimize.memory import cgroup_memory

    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1048576\n")
    assert cgroup_memory(tmp_path) is None  # "max": no limit
    (tmp_path / "memory.max").write_text("536870912\n")
    assert cgroup_memory(tmp_path) == (1_048_576, 536_870_912)


# -- sync use: scripts and notebooks --------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_sync_helpers_for_cache_database_and_scraper(
    settings: Settings, site: str, redis_url: str, database_url: str, unique_name: str
) -> None:
    s = settings.evolve(
        cache={"redis_url": redis_url, "redis_enabled": True},
        database={"url": database_url, "pool_size": 1, "max_overflow": 0},
    )
    with PerformanceOptimizer(s) as perf:
        perf.cache_sync.set(f"{unique_name}:a", {"v": 1})
        assert perf.cache_sync.get(f"{unique_name}:a") == {"v": 1}
        assert perf.database_sync.fetch("SELECT 41 + 1 AS n") == [{"n": 42}]
        result = perf.scraper.scrape_batch_sync([f"{site}/sync"])[0]
        assert result.ok
        assert perf.scraper.fetch_sync(f"{site}/one").ok
        assert sorted(_Handler.seen) == ["/one", "/sync"]

        async def notebook_cell() -> Any:
            # Another event loop in this thread, as in Jupyter: awaiting the parts works.
            await perf.cache.set(f"{unique_name}:b", 2)
            rows = await perf.database.fetch("SELECT 1 AS one")
            got = await perf.scraper.scrape_batch([f"{site}/cell"])
            status = await perf.status()  # the facade's own coroutines too
            analysis = await perf.run_performance_analysis()
            assert status["ok"], status["backends"]
            assert analysis["database"] is not None
            return await perf.cache.get(f"{unique_name}:b"), rows, got[0].ok

        assert asyncio.run(notebook_cell()) == (2, [{"one": 1}], True)
        assert perf.cache_sync.clear(f"{unique_name}:*") == 2
    assert perf.closed


@pytest.mark.anyio
async def test_sync_fronts_refused_after_async_open(settings: Settings) -> None:
    async with PerformanceOptimizer(settings) as perf:
        with pytest.raises(LeadperfError, match="async with"):
            _ = perf.cache_sync


@pytest.mark.anyio
async def test_parts_built_before_open_are_closed_with_the_facade(settings: Settings) -> None:
    perf = PerformanceOptimizer(settings)
    await perf.cache.set("k", 1)  # the cache opens itself on first use
    resources = perf.resources
    tasks = perf.tasks  # built, never entered
    await perf.aclose()
    assert perf.closed
    assert perf._parts["cache"].closed
    assert resources.closed
    assert tasks.closed
    with pytest.raises(ClosedError, match="cannot be reopened"):
        await perf.open()
    with pytest.raises(ClosedError):
        _ = perf.cache


@pytest.mark.anyio
async def test_a_part_failing_to_close_does_not_keep_the_others_open(settings: Settings) -> None:
    class Stubborn(MemoryCache):
        async def _close(self) -> None:
            raise RuntimeError("refuses to close")

    cache = Stubborn(settings=settings)
    perf = PerformanceOptimizer(settings, cache=cache)
    resources = perf.resources
    with pytest.raises(RuntimeError, match="refuses to close"):
        async with perf:
            await perf.cache.set("k", 1)
    assert cache.closed
    assert resources.closed
    assert perf.closed
