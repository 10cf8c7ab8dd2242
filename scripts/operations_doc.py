"""Generate docs/operations.md: every CLI command and REST route, run for real, with the
output it printed. Nothing in that file is written by hand.

Run (with the servers up): python3 scripts/operations_doc.py
Servers: REDIS_URL (default redis://127.0.0.1:6379/15) and DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/test); tables and keys it creates are removed after.
The two section functions are long on purpose: each is the document's outline, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "operations.md"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TOKEN = "doc-admin-token-" + uuid.uuid4().hex
MAX_LINES = 40

ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("LEADPERF_", "REDIS_", "DB_"))},
    "REDIS_URL": REDIS_URL,
    "DATABASE_URL": DATABASE_URL,
    "DB_POOL_SIZE": "2",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clip(text: str, limit: int = MAX_LINES) -> str:
    lines = text.rstrip("\n").splitlines()
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return "\n".join(lines)


def _block(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text}\n```\n"


class Doc:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def cli(
        self,
        title: str,
        args: list[str],
        note: str = "",
        env: dict[str, str] | None = None,
        limit: int = MAX_LINES,
        shown: str | None = None,
    ) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "leadperf", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        # The bar tqdm draws on stderr is progress, not output: keep only its last state.
        err_lines = done.stderr.replace("\r", "\n").strip().splitlines()
        err = "\n".join(x for x in err_lines if not ("%|" in x and "op/s" in x))
        output = (done.stdout + (f"\n[stderr] {err.splitlines()[-1]}" if err else "")).strip()
        command = shown or "leadperf " + " ".join(shlex.quote(a) for a in args)
        self.add(f"### {title}\n\n{note}\n\n" if note else f"### {title}\n\n")
        self.add(
            _block(f"$ {command}\n{_clip(output, limit)}\n[exit {done.returncode}]", "console")
        )


@contextlib.contextmanager
def _site() -> Iterator[str]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = f"<title>{self.path}</title>".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def cli_section(doc: Doc) -> None:
    import psycopg

    from leadperf.cache import SqliteCache
    from leadperf.optimize import Archiver

    doc.add(
        "## CLI\n\n`leadperf`, `bi-performance` and `python -m leadperf` are the same "
        "program. Global options (`--config`, `--profile`, `--log-level`) go before or "
        "after the command. Exit codes: 0 ok, 1 failure, 2 usage.\n\n"
    )
    doc.cli("--version", ["--version"])
    doc.cli(
        "status",
        ["status"],
        "Every backend is checked for real (a cache lookup on each tier, `SELECT 1`).",
    )
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    doc.cli(
        "status with Redis down",
        ["status"],
        "Exit 1 when a configured backend is down.",
        env={"REDIS_URL": dead},
        shown=f"REDIS_URL={dead} leadperf status",
    )
    doc.cli("metrics", ["metrics"], limit=30)
    doc.cli("metrics --json-output", ["metrics", "--json-output"], limit=20)
    doc.cli("metrics --prometheus", ["metrics", "--prometheus"], limit=12)
    doc.cli("optimize", ["optimize", "performance_focused"])
    doc.cli("optimize with an unknown profile", ["optimize", "turbo"])
    import redis

    raw = redis.Redis.from_url(REDIS_URL)
    for i in range(3):
        raw.set(f"leadperf:ops-doc:{i}", b"x")
    doc.cli("clear-cache", ["clear-cache", "--pattern", "ops-doc:*"])
    doc.cli(
        "clear-cache without a pattern",
        ["clear-cache"],
        "Without `--pattern` it asks on a terminal; otherwise it needs `--yes`.",
    )
    raw.close()
    doc.cli(
        "benchmark",
        ["benchmark", "--iterations", "500"],
        "Measured on a 2-core machine shared with other jobs: the figures show the "
        "output's shape, not a reference. With Redis configured the cache is tiered, so "
        "`cache.set` writes both tiers and `cache.get` is served by the in-process tier.",
    )
    table = f"ops_doc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} AS SELECT g AS id FROM generate_series(1, 20000) g")
        try:
            conn.execute(f"ANALYZE {table}")
            for _ in range(3):
                conn.execute(f"SELECT count(*) FROM {table} WHERE id = 7").fetchall()
            conn.execute("SELECT pg_stat_force_next_flush()")
            time.sleep(1.0)
            doc.cli(
                "recommendations",
                ["recommendations"],
                f"Here a {table} table of 20000 rows was scanned sequentially three times.",
            )
        finally:
            conn.execute(f"DROP TABLE {table}")
    doc.cli(
        "monitor",
        ["monitor", "--samples", "3", "--interval", "0.5"],
        "JSON lines when stdout is not a terminal (a table on one); Ctrl-C exits 0.",
    )
    doc.cli("settings", ["settings"], limit=80)
    doc.cli("profiles", ["profiles"])
    doc.cli("analyze", ["analyze"], limit=30)
    with _site() as base:
        doc.cli(
            "scrape",
            ["scrape", f"{base}/a", f"{base}/b", "not a url"],
            shown="leadperf scrape http://127.0.0.1:PORT/a http://127.0.0.1:PORT/b 'not a url'",
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache.db")
        namespace = f"opsdoc{uuid.uuid4().hex[:6]}"

        async def fill() -> None:
            async with SqliteCache(path, namespace=namespace) as cache:
                await cache.set_many({f"lead:{i}": {"i": i} for i in range(25)}, ttl=600)

        asyncio.run(fill())
        doc.cli(
            "migrate-cache",
            ["migrate-cache", path, "--to", DATABASE_URL],
            shown=f"leadperf migrate-cache cache.db --to {DATABASE_URL}",
        )
        doc.parts[-1] = doc.parts[-1].replace(path, "cache.db")
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute("DELETE FROM leadperf_cache WHERE key LIKE %s", (f"{namespace}:%",))
    events = f"ops_events_{uuid.uuid4().hex[:6]}"
    archiver = Archiver(DATABASE_URL, events, archive_schema=f"{events}_archive")
    archiver.create_table_sync("id bigint, created_at timestamptz NOT NULL")
    old = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
    archiver.ensure_partitions_sync(ahead=1, now=old)
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        try:
            conn.execute(
                f"INSERT INTO {events} SELECT g, %s FROM generate_series(1, 120) g", (old,)
            )
            doc.cli(
                "archive",
                [
                    "archive",
                    events,
                    "--older-than-days",
                    "30",
                    "--archive-schema",
                    f"{events}_archive",
                ],
            )
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {events} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {events}_archive CASCADE")
    doc.cli(
        "--help of a command",
        ["clear-cache", "--help"],
        "Every command's `--help` ends with an example.",
    )


def _show(
    doc: Doc,
    client: httpx.Client,
    method: str,
    path: str,
    note: str = "",
    limit: int = MAX_LINES,
    **kw: Any,
) -> None:
    response = client.request(method, path, **kw)
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = json.dumps(response.json(), indent=2)
    else:
        body = response.text
    headers = kw.get("headers") or {}
    shown = {
        k: ("Bearer <admin token>" if v == f"Bearer {TOKEN}" else v) for k, v in headers.items()
    }
    head = " ".join(f"-H '{k}: {v}'" for k, v in shown.items())
    query = "?" + str(httpx.QueryParams(kw["params"])) if kw.get("params") else ""
    doc.add(f"### {method} {path}\n\n{note}\n\n" if note else f"### {method} {path}\n\n")
    doc.add(
        _block(
            f"$ curl -X {method} {head} 'http://HOST{path}{query}'".replace("  ", " ")
            + f"\nHTTP {response.status_code} ({ctype.split(';')[0]})\n{_clip(body, limit)}",
            "console",
        )
    )


def rest_section(doc: Doc) -> None:
    import fastapi
    import uvicorn

    from leadperf import PerformanceOptimizer, Settings
    from leadperf.web import create_router

    doc.add(
        "## REST router\n\n`app.include_router(create_router(perf, admin_token=...))`: "
        "routes under `/performance`. The POST routes answer 403 until the host opens "
        "them with `admin_token=` or `admin_dependency=`. Served here by uvicorn.\n\n"
    )
    settings = Settings.from_env(dict(ENV))
    perf = PerformanceOptimizer(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await perf.aclose()

    def build(**kw: Any) -> fastapi.FastAPI:
        app = fastapi.FastAPI(lifespan=lifespan)
        app.include_router(create_router(perf, **kw))
        return app

    for label, app in (("closed", build()), ("open", build(admin_token=TOKEN))):
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            if label == "closed":
                _show(doc, client, "GET", "/performance/status")
                _show(doc, client, "GET", "/performance/health")
                _show(doc, client, "GET", "/performance/metrics", limit=25)
                _show(
                    doc,
                    client,
                    "GET",
                    "/performance/metrics",
                    "Prometheus text when the client asks for `text/plain`.",
                    limit=12,
                    headers={"Accept": "text/plain"},
                )
                _show(doc, client, "GET", "/performance/metrics/prometheus", limit=8)
                _show(doc, client, "GET", "/performance/cache/stats")
                _show(doc, client, "GET", "/performance/recommendations")
                _show(doc, client, "GET", "/performance/settings", limit=30)
                _show(doc, client, "GET", "/performance/analysis", limit=25)
                _show(doc, client, "GET", "/performance/profiles")
                _show(
                    doc,
                    client,
                    "POST",
                    "/performance/optimize/memory_focused",
                    "Closed by default.",
                )
                _show(doc, client, "POST", "/performance/cache/clear")
            else:
                _show(
                    doc,
                    client,
                    "POST",
                    "/performance/optimize/memory_focused",
                    "Opened with `admin_token=`; a wrong token is 401 (and logged without it).",
                    headers={"Authorization": "Bearer not-the-token"},
                )
                _show(
                    doc,
                    client,
                    "POST",
                    "/performance/optimize/memory_focused",
                    limit=60,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                _show(
                    doc,
                    client,
                    "POST",
                    "/performance/cache/clear",
                    params={"pattern": "ops-doc:*"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
        server.should_exit = True
        thread.join()
        perf = PerformanceOptimizer(settings)


def main() -> None:
    doc = Doc()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc.add(
        "# Operations: the CLI and the REST router\n\n"
        f"Generated by `python3 scripts/operations_doc.py` on {when}, against Redis "
        f"(`{REDIS_URL}`) and PostgreSQL (`{DATABASE_URL}`) on one shared machine; every "
        "block below is what the command or route printed in that run (long outputs "
        "clipped). Rerun the script to refresh it.\n\n"
    )
    cli_section(doc)
    rest_section(doc)
    OUT.write_text("".join(doc.parts))
    print(f"wrote {OUT.relative_to(ROOT)} ({len(''.join(doc.parts).splitlines())} lines)")


if __name__ == "__main__":
    main()
