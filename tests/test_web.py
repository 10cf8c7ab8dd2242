"""The REST router under a real uvicorn server, spoken to with a real HTTP client."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from leadperf import ConfigError, PerformanceOptimizer, Settings
from leadperf.optimize import PROFILES

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from leadperf.web import create_router  # noqa: E402

TOKEN = "s3cret-admin-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(perf: PerformanceOptimizer, **router_args: Any) -> Iterator[str]:
    """Run ``create_router(perf, **router_args)`` in uvicorn on 127.0.0.1; yield its URL."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await perf.aclose()  # parts opened on the server's loop close on it

    app = fastapi.FastAPI(lifespan=lifespan)
    app.include_router(create_router(perf, **router_args))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited before it started"
        assert time.monotonic() < deadline, "uvicorn did not start within 20s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive()


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return Settings().evolve(
        cache={"redis_url": redis_url, "redis_enabled": True},
        database={"url": database_url, "pool_size": 1, "max_overflow": 1},
        monitoring={"metrics_interval": 0.5},
    )


def test_every_route_answers_and_openapi_lists_its_model(settings: Settings) -> None:
    perf = PerformanceOptimizer(settings.evolve(database={"url": settings.database.url}))
    with serve(perf) as base, httpx.Client(base_url=base, timeout=30) as client:
        status = client.get("/performance/status")
        assert status.status_code == 200
        body = status.json()
        assert body["ok"] is True
        assert body["backends"]["cache"] == {**body["backends"]["cache"], "ok": True}
        assert body["backends"]["cache"]["backend"] == "memory+redis"
        assert body["backends"]["database"]["ok"] is True
        assert body["process"]["rss_mb"] > 0
        health = client.get("/performance/health").json()
        assert health["status"] == "ok"
        assert set(health["backends"]) == {"cache", "database"}

        metrics = client.get("/performance/metrics")
        assert metrics.headers["content-type"].startswith("application/json")
        assert metrics.json()["system"]["process_rss_mb"] > 0
        text = client.get("/performance/metrics", headers={"Accept": "text/plain"})
        assert text.headers["content-type"].startswith("text/plain")
        assert "# TYPE leadperf_system_process_rss_mb gauge" in text.text
        prom = client.get("/performance/metrics/prometheus")
        assert "leadperf_source_errors" in prom.text

        stats = client.get("/performance/cache/stats").json()
        assert stats["backend"] == "tiered"
        assert stats["errors"] == 0
        assert isinstance(client.get("/performance/recommendations").json(), list)
        settings_body = client.get("/performance/settings").text
        assert "postgres@" in settings_body
        assert client.get("/performance/analysis").json()["profile"] == "balanced"
        assert set(client.get("/performance/profiles").json()) == set(PROFILES)

        schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("get", "/performance/status"): "StatusResponse",
        ("get", "/performance/health"): "HealthResponse",
        ("get", "/performance/cache/stats"): "CacheStatsResponse",
        ("post", "/performance/optimize/{profile}"): "OptimizeResponse",
        ("post", "/performance/cache/clear"): "ClearResponse",
    }
    for (method, path), model in expected.items():
        ref = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ref["$ref"].endswith(f"/{model}"), (path, ref)
    recs = paths["/performance/recommendations"]["get"]["responses"]["200"]["content"]
    assert recs["application/json"]["schema"]["items"]["$ref"].endswith("/RecommendationModel")
    for path in ("/metrics", "/metrics/prometheus", "/settings", "/analysis", "/profiles"):
        assert "get" in paths[f"/performance{path}"]


def test_state_changing_routes_are_closed_by_default(settings: Settings) -> None:
    perf = PerformanceOptimizer(settings)
    with serve(perf, prefix="/ops") as base, httpx.Client(base_url=base, timeout=30) as client:
        denied = client.post("/ops/optimize/memory_focused")
        assert denied.status_code == 403
        assert "admin_token" in denied.json()["detail"]
        assert client.post("/ops/cache/clear").status_code == 403
        assert (
            client.post(
                "/ops/cache/clear", headers={"Authorization": f"Bearer {TOKEN}"}
            ).status_code
            == 403
        )
        assert client.get("/ops/health").status_code == 200
    assert perf.settings.profile == "balanced"  # nothing changed


def test_admin_token_opens_posts_and_wrong_token_is_logged_without_it(
    settings: Settings,
    redis_url: str,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    reliability: Any,
) -> None:
    import redis

    raw = redis.Redis.from_url(redis_url)
    raw.set(f"leadperf:{unique_name}:a", b"x")
    raw.set(f"leadperf:{unique_name}:b", b"x")
    raw.set(f"leadperf:{unique_name}-keep", b"x")
    perf = PerformanceOptimizer(settings)
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with (
            caplog.at_level(logging.WARNING, logger="leadperf.web"),
            serve(perf, admin_token=TOKEN) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            missing = client.post("/performance/optimize/memory_focused")
            wrong = client.post(
                "/performance/optimize/memory_focused",
                headers={"Authorization": "Bearer wrong-token-guess-123456"},
            )
            assert (missing.status_code, wrong.status_code) == (401, 401)
            assert wrong.headers["www-authenticate"] == "Bearer"
            assert perf.settings.profile == "balanced"

            ok = client.post("/performance/optimize/performance_focused", headers=good)
            assert ok.status_code == 200
            body = ok.json()
            assert body["profile_applied"] == "performance_focused"
            assert body["changes"]["cache.default_ttl"] == [3600.0, 14400.0]
            assert perf.settings.cache.default_ttl == 14_400.0
            bad = client.post("/performance/optimize/turbo", headers=good)
            assert bad.status_code == 400
            for name in PROFILES:
                assert name in bad.json()["detail"]

            cleared = client.post(
                "/performance/cache/clear", params={"pattern": f"{unique_name}:*"}, headers=good
            )
            assert cleared.json() == {"removed": 2, "pattern": f"{unique_name}:*"}
            empty = client.post("/performance/cache/clear", params={"pattern": ""}, headers=good)
            assert empty.status_code == 400
        assert raw.exists(f"leadperf:{unique_name}:a", f"leadperf:{unique_name}:b") == 0
        assert raw.exists(f"leadperf:{unique_name}-keep") == 1
    finally:
        raw.delete(f"leadperf:{unique_name}-keep")
        raw.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "leadperf.web"]
    assert any("wrong admin token" in m for m in logged)
    assert any("missing admin token" in m for m in logged)
    assert not any("wrong-token-guess" in m or TOKEN in m for m in logged)
    reliability.record(
        "web",
        "POST with a missing and a wrong Bearer token",
        "401, profile unchanged, token never logged",
        f"statuses 401/401, {len(logged)} log lines, none containing a token",
    )


def test_admin_dependency_guards_posts(settings: Settings) -> None:
    def only_ops(x_role: str | None = fastapi.Header(default=None)) -> None:
        if x_role != "ops":
            raise fastapi.HTTPException(status_code=403, detail="ops only")

    perf = PerformanceOptimizer(settings)
    with serve(perf, admin_dependency=only_ops) as base, httpx.Client(base_url=base) as client:
        assert client.post("/performance/optimize/memory_focused").status_code == 403
        assert perf.settings.profile == "balanced"
        done = client.post("/performance/optimize/memory_focused", headers={"X-Role": "ops"})
        assert done.status_code == 200
        assert perf.settings.profile == "memory_focused"


def test_status_and_health_are_503_when_redis_is_down(settings: Settings, reliability: Any) -> None:
    dead = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    perf = PerformanceOptimizer(settings.evolve(cache={"redis_url": dead}))
    with serve(perf) as base, httpx.Client(base_url=base, timeout=30) as client:
        status = client.get("/performance/status")
        health = client.get("/performance/health")
        clear = client.post("/performance/cache/clear")
    assert status.status_code == 503
    check = status.json()["backends"]["cache"]
    assert check["ok"] is False
    assert "redis" in check["error"]
    assert status.json()["backends"]["database"]["ok"] is True
    assert (health.status_code, health.json()["status"]) == (503, "degraded")
    assert clear.status_code == 403  # still closed, even with a backend down
    reliability.record(
        "web",
        "Redis behind the tiered cache refuses connections",
        "/status and /health answer 503 naming the cache",
        f"/status {status.status_code}, /health {health.status_code}: {check['error']}",
    )


@pytest.mark.parametrize("token", ["short", 12345])
def test_bad_router_arguments(token: Any) -> None:
    with pytest.raises(ConfigError, match="admin_token"):
        create_router(PerformanceOptimizer(Settings()), admin_token=token)
    with pytest.raises(ConfigError, match="prefix"):
        create_router(PerformanceOptimizer(Settings()), prefix="performance/")


def test_hostile_input_gets_one_clear_status(settings: Settings, reliability: Any) -> None:
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    perf = PerformanceOptimizer(settings.evolve(cache={"url": dead}))
    good = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serve(perf, admin_token=TOKEN) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        long = client.post("/performance/cache/clear", params={"pattern": "x" * 600}, headers=good)
        odd = client.post("/performance/optimize/..%2F..%2Fetc", headers=good)
        down = client.post("/performance/cache/clear", params={"pattern": "lead:*"}, headers=good)
        lower = client.post(
            "/performance/optimize/memory_focused", headers={"Authorization": f"bearer {TOKEN}"}
        )
    assert long.status_code == 400
    assert "pattern" in long.json()["detail"]
    assert odd.status_code in (400, 404)
    assert down.status_code == 503
    assert "did not answer" in down.json()["detail"]
    assert lower.status_code == 200  # the scheme name is case-insensitive (RFC 7235)
    reliability.record(
        "web",
        "600-char pattern, path-traversal profile, clear with the cache server down",
        "400 / 400-or-404 / 503, one message each, nothing cleared",
        f"{long.status_code} / {odd.status_code} / {down.status_code}",
    )
