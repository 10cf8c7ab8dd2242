from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leadperf import ClosedError, ConfigError, PerformanceOptimizer, Settings
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
    assert cli_main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert "leadperf_system_process_rss_mb " in out
    assert "leadperf_cache_hits 0" in out


def test_rest_router(site: str, settings: Settings) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from leadperf.web import create_router

    perf = PerformanceOptimizer(
        settings.evolve(database={"url": "postgresql://lead:hunter2@127.0.0.1/x"})
    )
    app = FastAPI()
    app.include_router(create_router(perf), prefix="/performance")
    with TestClient(app) as client:
        assert client.get("/performance/health").json()["status"] == "ok"
        body = client.get("/performance/settings").text
        assert "hunter2" not in body
        assert "lead:***@" in body
        analysis = client.get("/performance/analysis").json()
        assert 0.0 <= analysis["cache_performance"]["hit_rate"] <= 1.0
        metrics = client.get("/performance/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "leadperf_system_memory_percent" in metrics.text
        assert set(client.get("/performance/profiles").json()) == set(PROFILES)
        ok = client.post("/performance/optimize/memory_focused").json()
        assert ok["profile_applied"] == "memory_focused"
        bad = client.post("/performance/optimize/turbo")
        assert bad.status_code == 400
        assert "unknown profile" in bad.json()["detail"]
        assert client.get("/performance/cache/stats").json()["hits"] == 0
    perf.close()


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
