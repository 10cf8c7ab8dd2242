"""The Celery pattern for real: a prefork worker (2 processes) scrapes chunks into PostgreSQL.

The broker and the shared state each get a redis-server of the test's own, so connection
counts on the state server are leadperf's alone. Assertions read the HTTP server's
records, the table, Redis's and PostgreSQL's own views of their clients, and the worker's
exit; tests/celery_app.py is the documented pattern with these servers filled in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scale_worker import SRC, OwnRedis
from scrape_server import ScrapeServer

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]

TESTS = os.path.dirname(os.path.abspath(__file__))


def _state_clients(client: Any) -> int:
    return sum(1 for c in client.client_list() if c.get("name") != "probe")


def _pg_clients(dsn: str, app_name: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_prefork_worker_scrapes_chunks_into_postgres_once(
    tmp_path: Path, database_url: str, unique_name: str, reliability: Any
) -> None:
    pytest.importorskip("celery")
    import psycopg
    import redis
    from celery import Celery

    broker, state = OwnRedis().start(), OwnRedis().start()
    dsn = f"{database_url}?application_name={unique_name}"
    table = unique_name
    log = tmp_path / "worker.log"
    probe = redis.Redis.from_url(state.url, client_name="probe")
    proc: subprocess.Popen[bytes] | None = None
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {table} (url text PRIMARY KEY, status int, size int, error text)"
            )
        with ScrapeServer(ports=2) as server:
            limits = {server.platform(0): 3, server.platform(1): 4}
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([os.path.abspath(SRC), TESTS]),
                "LEADPERF_CELERY_BROKER": broker.url,
                "LEADPERF_CELERY_STATE": state.url,
                "LEADPERF_CELERY_DSN": dsn,
                "LEADPERF_CELERY_NAME": unique_name,
                "LEADPERF_CELERY_LIMITS": json.dumps(limits),
            }
            command = [sys.executable, "-m", "celery", "-A", "celery_app", "worker"]
            command += ["--pool=prefork", "--concurrency=2", "--loglevel=INFO"]
            command += ["--without-heartbeat", "--without-mingle", "--without-gossip"]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command, cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            client = Celery("client", broker=broker.url, backend=broker.url)
            urls = [
                server.url(i % 2, f"/page/{unique_name}-{i}?size=256&delay=0.03")
                for i in range(240)
            ]
            chunks = [urls[i : i + 20] for i in range(0, 240, 20)]

            def run(batch: list[list[str]]) -> list[dict[str, Any]]:
                pending = [
                    client.send_task("celery_app.scrape_chunk", args=[c, table]) for c in batch
                ]
                return [p.get(timeout=90) for p in pending]

            first = run(chunks[:6])
            _wait_for(lambda: _pg_clients(database_url, unique_name) > 0, 10, "pool connections")
            received = int(probe.info("stats")["total_connections_received"])
            second = run([*chunks[6:], chunks[0]])  # chunk 0 again: every URL a duplicate
            new_connections = int(probe.info("stats")["total_connections_received"]) - received
            pg_during = _pg_clients(database_url, unique_name)
            redis_during = _state_clients(probe)

            proc.send_signal(signal.SIGTERM)  # warm shutdown: children close, then exit
            proc.wait(60)
            _wait_for(lambda: _state_clients(probe) == 0, 10, "Redis clients to close")
            _wait_for(lambda: _pg_clients(database_url, unique_name) == 0, 10, "PG to close")

            hits = Counter(target for _, target in server.arrivals())
            concurrency = [server.max_concurrency(i) for i in range(2)]
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(f"SELECT url, status FROM {table}").fetchall()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        probe.close()
        broker.close()
        state.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")

    results = first + second
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    assert sum(r["fetched"] for r in results) == 240
    assert second[-1]["duplicates"] == 20  # the repeated chunk fetched nothing
    assert all(r["builds"] == 1 for r in results), "each process built its scraper once"
    pids = Counter(r["pid"] for r in results)
    assert 1 <= len(pids) <= 2
    for pid in pids:
        tasks = [r["tasks"] for r in results if r["pid"] == pid]
        assert sorted(tasks) == list(range(1, len(tasks) + 1)), "one scraper ran every task"
    assert len(hits) == 240
    assert set(hits.values()) == {1}, "each URL fetched once across processes and chunks"
    assert concurrency[0] <= 3
    assert concurrency[1] <= 4
    assert sorted(url for url, _ in rows) == sorted(urls), "every URL's row exactly once"
    assert {status for _, status in rows} == {200}
    # Reuse: tasks after the first wave opened (almost) no new Redis connections.
    assert new_connections < len(second)
    assert pg_during >= 1
    assert redis_during >= 1
    text = log.read_text(errors="replace")
    assert text.count("leadperf worker resources closed in process") >= len(pids)
    reliability.record(
        "scale",
        "Celery prefork worker (2 processes): 13 chunks of 20 URLs, one chunk sent twice, "
        "then SIGTERM",
        "every URL fetched once and stored once; resources built once per process, "
        "closed at shutdown",
        f"240 rows for 240 URLs, each hit once; {len(pids)} process(es), builds=1 in each; "
        f"{new_connections} new Redis connections over the last {len(second)} tasks; "
        "after shutdown 0 Redis and 0 PostgreSQL connections left",
    )


def test_scrape_worker_rejects_bad_builds() -> None:
    pytest.importorskip("celery")
    from celery import Celery

    from leadperf import AsyncScraper
    from leadperf.errors import ConfigError
    from leadperf.integrations.celery import ScrapeWorker, WorkerResources, default_row
    from leadperf.scraper import ScrapeResult

    app = Celery("unit", broker="memory://")
    with pytest.raises(ConfigError, match="build"):
        ScrapeWorker(app, build=None)  # type: ignore[arg-type]
    worker = ScrapeWorker(app, lambda: "not resources")  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match="WorkerResources"):
        worker.scrape(["http://127.0.0.1:1/"])
    no_db = ScrapeWorker(app, lambda: WorkerResources(scraper=AsyncScraper()))
    try:
        with pytest.raises(ConfigError, match="database"):
            no_db.scrape_into(["http://127.0.0.1:1/"], table="t")
        assert no_db.builds == 1
    finally:
        no_db.close()
        no_db.close()  # idempotent
    assert default_row(ScrapeResult(url="http://a/", duplicate=True)) is None
