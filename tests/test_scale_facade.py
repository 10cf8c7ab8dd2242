"""The facade picks the shared limiter and dedup set up from ``settings.scale``.

Two facades built from the same settings stand for two workers. What they share is read
from the recording HTTP server (tests/scrape_server.py: concurrency and hits per target)
and from Redis itself (``CLIENT LIST`` by client name, keys under the test's namespace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from leadperf import PerformanceOptimizer, Settings
from scale_worker import free_port
from scrape_server import ScrapeServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(90)]

#: Each request is held this long by the server, so the workers' requests overlap.
HOLD = 0.25


def _with_query(url: str, **query: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in query.items())


def _settings(redis_url: str, namespace: str, *, limiter: bool, dedup: bool) -> Settings:
    # The client name lets the test find the facade's connections in CLIENT LIST.
    url = _with_query(redis_url, client_name=namespace)
    return Settings(
        scale={
            "limiter_url": url if limiter else None,
            "dedup_url": url if dedup else None,
            "namespace": namespace,
            "lease_seconds": 10.0,
        },
        scraper={"max_concurrent": 2},
        cache={"enabled": False},
        monitoring={"system_monitoring": False},
        memory={"gc_freeze": False},
    )


@pytest.fixture
async def cleanup(redis_url: str, unique_name: str) -> AsyncIterator[str]:
    """The test's namespace; its keys are deleted afterwards (db 15 is shared)."""
    import redis.asyncio as aioredis

    yield unique_name
    client = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=unique_name + ":*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _clients_named(redis_url: str, name: str) -> int:
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url)
    try:
        return sum(1 for c in await admin.client_list() if c.get("name") == name)
    finally:
        await admin.aclose()


async def _two_workers_scrape(settings: Settings, lists: list[list[str]]) -> list[Any]:
    """Two facades from ``settings`` scrape their URL lists at the same time."""
    results: list[Any] = [None, None]
    async with PerformanceOptimizer(settings) as a, PerformanceOptimizer(settings) as b:

        async def run(i: int, perf: PerformanceOptimizer) -> None:
            results[i] = await perf.scraper.scrape_batch(lists[i])

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, a)
            tg.start_soon(run, 1, b)
        results.append([await a.run_performance_analysis(), await b.run_performance_analysis()])
    return results


async def test_two_facades_share_one_platform_limit(redis_url: str, cleanup: str) -> None:
    with ScrapeServer(ports=1) as server:
        lists = [
            [server.url(0, f"/page/{w}-{i}?size=64&delay={HOLD}") for i in range(8)] for w in "ab"
        ]
        # Without the shared limiter each facade keeps only its own limit: 2 + 2 at once.
        plain = _settings(redis_url, cleanup, limiter=False, dedup=False)
        await _two_workers_scrape(plain, lists)
        assert server.max_concurrency(0) == 4

        server.reset()
        shared = _settings(redis_url, cleanup, limiter=True, dedup=False)
        first, second, analyses = await _two_workers_scrape(shared, lists)
        assert server.max_concurrency(0) == 2  # the shared limit, never above it
        assert all(r.ok for r in first + second)
        assert server.total_hits == 16
        for analysis in analyses:
            limiter = analysis["scale"]["limiter"]
            assert limiter["shared"] is True
            assert limiter["fallbacks"] == 0
            assert limiter["shared_acquires"] == 8
            assert limiter["local_acquires"] == 0
            assert analysis["scale"]["dedup"] is None
            assert analysis["metrics"]["scale"]["limiter_shared"] == 1.0


async def test_two_facades_fetch_each_url_once(redis_url: str, cleanup: str) -> None:
    with ScrapeServer(ports=2) as server:
        urls = [server.url(i % 2, f"/page/{cleanup}-{i}?size=64&delay=0.02") for i in range(30)]
        settings = _settings(redis_url, cleanup, limiter=False, dedup=True)
        first, second, analyses = await _two_workers_scrape(settings, [urls, list(urls)])
        hits = server.all_hits()
        assert len(hits) == 30
        assert set(hits.values()) == {1}
        assert sum(r.duplicate for r in first + second) == 30
        assert all(r.ok for r in first + second if not r.duplicate)
        dedup = [a["scale"]["dedup"] for a in analyses]
        assert sum(d["added"] for d in dedup) == 30
        assert sum(d["duplicates"] for d in dedup) == 30
        assert analyses[0]["scale"]["limiter"] is None


async def test_closing_the_facade_closes_the_limiter_and_dedup(
    redis_url: str, cleanup: str
) -> None:
    settings = _settings(redis_url, cleanup, limiter=True, dedup=True)
    assert await _clients_named(redis_url, cleanup) == 0
    with ScrapeServer(ports=1) as server:
        perf = PerformanceOptimizer(settings)
        async with perf:
            results = await perf.scraper.scrape_batch(
                [server.url(0, f"/tiny/{i}") for i in range(6)]
            )
            assert all(r.ok for r in results)
            assert await _clients_named(redis_url, cleanup) >= 2  # limiter's and dedup's
            limiter, dedup = perf._parts["limiter"], perf._parts["dedup"]
            assert not limiter.closed
            assert not dedup.closed
    assert limiter.closed
    assert dedup.closed
    assert "scale" not in perf.registry.names()
    deadline = time.monotonic() + 5.0
    while (left := await _clients_named(redis_url, cleanup)) and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    assert left == 0, f"{left} Redis connections left open after close"


async def test_unreachable_limiter_falls_back_to_local_limits_and_status_says_so(
    unique_name: str, reliability: Any
) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = Settings(
        scale={"limiter_url": dead, "dedup_url": dead, "namespace": unique_name},
        scraper={"max_concurrent": 2},
        cache={"enabled": False},
        memory={"gc_freeze": False},
    )
    with ScrapeServer(ports=1) as server:
        async with PerformanceOptimizer(settings) as perf:
            urls = [server.url(0, f"/page/{i}?size=64&delay=0.05") for i in range(10)]
            results = await perf.scraper.scrape_batch(urls)
            analysis = await perf.run_performance_analysis()
            status = await perf.status()
    assert all(r.ok for r in results)  # a dedup outage fetches anyway, never loses URLs
    assert server.total_hits == 10
    assert server.max_concurrency(0) <= 2  # local limits, never unlimited
    limiter = analysis["scale"]["limiter"]
    assert limiter["shared"] is False
    assert limiter["fallbacks"] >= 1
    assert limiter["local_acquires"] == 10
    assert status["ok"] is False
    for name in ("limiter", "dedup"):
        check = status["backends"][name]
        assert check["configured"] is True
        assert check["ok"] is False
        assert check["backend"] == "redis"
        assert "unreachable" in check["error"]
        assert "hunter2" not in check["error"]
    assert "hunter2" not in json.dumps(status) + json.dumps(analysis)
    reliability.record(
        "scale",
        "facade's limiter and dedup Redis unreachable",
        "scraping continues on local limits; status reports both stores down",
        f"10/10 URLs fetched, peak {server.max_concurrency(0)} at once (limit 2), "
        f"limiter shared={limiter['shared']} fallbacks={limiter['fallbacks']}, "
        f"status ok={status['ok']}",
    )


async def test_status_checks_reachable_stores(redis_url: str, cleanup: str) -> None:
    settings = _settings(redis_url, cleanup, limiter=True, dedup=True)
    async with PerformanceOptimizer(settings) as perf:
        status = await perf.status()
    assert status["ok"] is True
    for name in ("limiter", "dedup"):
        check = status["backends"][name]
        assert check["ok"] is True
        assert check["backend"] == "redis"
        assert check["latency_ms"] > 0
        assert check["error"] is None
    async with PerformanceOptimizer(_settings(redis_url, cleanup, limiter=False, dedup=False)) as p:
        assert set(await p.check_backends()) == {"cache", "database"}


def test_cli_status_reports_the_stores(redis_url: str, unique_name: str, tmp_path: Any) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEADPERF_", "REDIS_", "DATABASE_", "DB_"))
    }
    env |= {
        "LEADPERF_LIMITER_URL": redis_url,
        "LEADPERF_DEDUP_URL": dead,
        "LEADPERF_SCALE_NAMESPACE": unique_name,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "leadperf", "status", "--json-output"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr  # a configured store is down
    data = json.loads(proc.stdout)
    assert data["backends"]["limiter"]["ok"] is True
    assert data["backends"]["dedup"]["ok"] is False
    assert "hunter2" not in proc.stdout + proc.stderr


def test_facade_without_scale_urls_never_imports_leadperf_scale() -> None:
    code = (
        "import sys; from leadperf import PerformanceOptimizer, Settings; "
        "perf = PerformanceOptimizer(Settings()); perf.scraper; "
        "print('leadperf.scale' in sys.modules, 'redis' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_sync_facade_shares_the_limit_and_closes_it(redis_url: str, unique_name: str) -> None:
    import redis

    settings = _settings(redis_url, unique_name, limiter=True, dedup=False)
    try:
        with ScrapeServer(ports=1) as server:
            perf = PerformanceOptimizer(settings)
            with perf:
                urls = [server.url(0, f"/page/{i}?size=64&delay=0.05") for i in range(6)]
                results = perf.scraper.scrape_batch_sync(urls)
                analysis = perf.run_performance_analysis_sync()
            assert all(r.ok for r in results)
            assert server.max_concurrency(0) <= 2
            assert analysis["scale"]["limiter"]["shared_acquires"] == 6
            assert perf._parts["limiter"].closed
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=unique_name + ":*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_rest_status_reports_the_stores(redis_url: str, unique_name: str) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import httpx

    from test_web import serve

    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = Settings(
        scale={"limiter_url": redis_url, "dedup_url": dead, "namespace": unique_name},
        memory={"gc_freeze": False},
    )
    perf = PerformanceOptimizer(settings)
    with serve(perf) as base, httpx.Client(base_url=base, timeout=30) as client:
        response = client.get("/performance/status")
    assert response.status_code == 503  # a configured store is down
    backends = response.json()["backends"]
    assert backends["limiter"]["ok"] is True
    assert backends["dedup"]["ok"] is False
    assert "hunter2" not in response.text
    assert perf.closed
