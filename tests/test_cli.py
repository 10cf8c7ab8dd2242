"""The ``leadperf`` CLI: each command's output and exit code against real Redis and
PostgreSQL, run in-process (``main``) and as the installed programs."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from leadperf.cli import main
from leadperf.optimize import PROFILES

COMMANDS = (
    "status", "metrics", "optimize", "clear-cache", "benchmark", "recommendations", "monitor",
    "settings", "profiles", "analyze", "scrape", "migrate-cache", "archive",
)  # fmt: skip


def _dead_redis() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # closed again: nothing listens


@pytest.fixture
def env(tmp_env: pytest.MonkeyPatch, redis_url: str, database_url: str) -> pytest.MonkeyPatch:
    tmp_env.setenv("REDIS_URL", redis_url)
    tmp_env.setenv("DATABASE_URL", database_url)
    tmp_env.setenv("DB_POOL_SIZE", "1")
    tmp_env.setenv("PERFORMANCE_MONITORING_ENABLED", "false")
    return tmp_env


def _run(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadperf", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def test_status_reads_every_backend(env: pytest.MonkeyPatch, capsys: Any) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "Cache      memory+redis: ok" in out
    assert "Database   postgresql: ok" in out
    for label in ("CPU", "Memory", "Container", "Process", "Browsers", "Profile"):
        assert label in out
    assert main(["status", "--json-output"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["backends"]["cache"]["latency_ms"] > 0


def test_status_exits_1_when_a_backend_is_down(
    env: pytest.MonkeyPatch, capsys: Any, reliability: Any
) -> None:
    env.setenv("REDIS_URL", _dead_redis())
    env.setenv("DATABASE_URL", "postgresql://lead:hunter2@127.0.0.1:1/nowhere")
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "Cache      memory+redis: DOWN" in out
    assert "Database   postgresql: DOWN" in out
    assert "hunter2" not in out
    reliability.record(
        "cli",
        "status with Redis and PostgreSQL refusing connections",
        "exit 1, each backend marked DOWN, no password printed",
        "exit 1; " + "; ".join(line for line in out.splitlines() if "DOWN" in line)[:200],
    )


def test_metrics_text_json_and_prometheus(env: pytest.MonkeyPatch, capsys: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert main(["metrics"]) == 0
    text = capsys.readouterr().out
    assert "[system]" in text
    assert "process_rss_mb" in text
    assert main(["metrics", "--json-output"]) == 0
    assert json.loads(capsys.readouterr().out)["system"]["process_rss_mb"] > 0
    assert main(["--profile", "memory_focused", "metrics", "--prometheus"]) == 0
    names = {f.name for f in text_string_to_metric_families(capsys.readouterr().out)}
    assert "leadperf_system_process_rss_mb" in names
    assert "leadperf_source_errors" in names


def test_optimize_prints_changes_and_refuses_unknown_profiles(
    tmp_env: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert main(["optimize", "performance_focused"]) == 0
    out = capsys.readouterr().out
    assert "Profile balanced -> performance_focused" in out
    line = next(x for x in out.splitlines() if x.startswith("cache.default_ttl"))
    assert line.split()[1:] == ["3600", "14400"]
    assert main(["optimize", "turbo"]) == 2
    err = capsys.readouterr().err
    for name in PROFILES:
        assert name in err


def test_clear_cache_removes_only_the_pattern(
    env: pytest.MonkeyPatch, redis_url: str, unique_name: str, capsys: Any
) -> None:
    import redis

    raw = redis.Redis.from_url(redis_url)
    try:
        for i in range(3):
            raw.set(f"leadperf:{unique_name}:{i}", b"x")
        raw.set(f"leadperf:{unique_name}-other", b"x")
        assert main(["clear-cache", "--pattern", f"{unique_name}:*"]) == 0
        assert capsys.readouterr().out.strip() == f"Removed 3 keys matching '{unique_name}:*'."
        assert raw.exists(*(f"leadperf:{unique_name}:{i}" for i in range(3))) == 0
        assert raw.exists(f"leadperf:{unique_name}-other") == 1
        # Without a pattern: refuses unless --yes (stdin is not a terminal here).
        assert main(["clear-cache"]) == 2
        assert "--yes" in capsys.readouterr().err
        assert main(["clear-cache", "--pattern", ""]) == 2
        assert "pattern" in capsys.readouterr().err
        assert raw.exists(f"leadperf:{unique_name}-other") == 1
    finally:
        raw.delete(f"leadperf:{unique_name}-other")
        raw.close()


def test_clear_cache_reports_a_down_server(env: pytest.MonkeyPatch, capsys: Any) -> None:
    env.setenv("LEADPERF_CACHE_URL", _dead_redis())
    assert main(["clear-cache", "--pattern", "x*"]) == 1
    assert "did not answer" in capsys.readouterr().err
    assert main(["benchmark", "--iterations", "5"]) == 1
    assert "cannot benchmark, a backend is down: cache" in capsys.readouterr().err


def test_benchmark_times_cache_and_database(
    env: pytest.MonkeyPatch, redis_url: str, capsys: Any
) -> None:
    import redis

    assert main(["benchmark", "--iterations", "40"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "cache backend: memory+redis, 40 iterations per operation"
    assert lines[1].split() == ["operation", "n", "p50", "ms", "p95", "ms", "p99", "ms", "ops/s"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"cache.set", "cache.get", "database.select_1"}
    for n, p50, p95, p99, ops in rows.values():
        assert n == "40"
        assert 0 < float(p50) <= float(p95) <= float(p99)
        assert float(ops.replace(",", "")) > 0
    raw = redis.Redis.from_url(redis_url)
    assert list(raw.scan_iter("leadperf:leadperf-bench:*")) == []  # cleaned up
    raw.close()
    assert main(["benchmark", "--iterations", "0"]) == 2


def test_recommendations_print_the_figure(
    env: pytest.MonkeyPatch, database_url: str, unique_name: str, capsys: Any
) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {unique_name} AS SELECT g AS id FROM generate_series(1, 12000) g"
        )
        try:
            conn.execute(f"ANALYZE {unique_name}")
            for _ in range(3):
                conn.execute(f"SELECT count(*) FROM {unique_name} WHERE id = 5").fetchall()
            conn.execute("SELECT pg_stat_force_next_flush()")
            deadline = time.monotonic() + 15
            out = ""
            while time.monotonic() < deadline:
                assert main(["recommendations"]) == 0
                out = capsys.readouterr().out
                if f"[{unique_name}.seq_scan = " in out:
                    break
                time.sleep(0.2)
            line = next(x for x in out.splitlines() if f"Table {unique_name} " in x)
            assert line.startswith("WARNING  database")
            assert "was read by 3 sequential scans (12000 rows each)" in line
        finally:
            conn.execute(f"DROP TABLE {unique_name}")


def test_monitor_writes_json_lines_when_piped(tmp_env: pytest.MonkeyPatch, capsys: Any) -> None:
    assert main(["monitor", "--samples", "3", "--interval", "0.01"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert lines[0]["process_rss_mb"] > 0
    assert lines[0]["timestamp"] < lines[2]["timestamp"]
    assert main(["monitor", "--interval", "0"]) == 2


def test_monitor_ctrl_c_exits_0_without_traceback(tmp_env: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadperf", "monitor", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["process_rss_mb"] > 0  # it runs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert err == ""


def test_closed_pipe_ends_quietly(tmp_env: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadperf", "monitor", "--interval", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""


def test_version_help_and_global_options_anywhere(tmp_env: pytest.MonkeyPatch, capsys: Any) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("leadperf ")
    for command in COMMANDS:
        assert main([command, "--help"]) == 0
        assert "example:\n  " in capsys.readouterr().out, command
    assert main(["settings", "--profile", "memory_focused"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "memory_focused"
    assert main(["--profile", "performance_focused", "settings"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["default_ttl"] == 14_400.0
    assert main(["nonsense"]) == 2
    assert main([]) == 2
    capsys.readouterr()
    tmp_env.setenv("DATABASE_URL", "mysql://u:pw@h/db")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "DATABASE_URL" in err or "database.url" in err
    assert "pw@" not in err


@pytest.mark.parametrize("program", ["leadperf", "bi-performance"])
def test_console_scripts(program: str, tmp_env: pytest.MonkeyPatch) -> None:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed: pip install -e '.[all,test]'")
    done = subprocess.run([path, "profiles"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert set(json.loads(done.stdout)) == set(PROFILES)
    module = _run("--version")
    assert (module.returncode, module.stdout.split()[0]) == (0, "leadperf")


def test_migrate_cache_copies_sqlite_into_postgres(
    env: pytest.MonkeyPatch, database_url: str, unique_name: str, tmp_path: Any, capsys: Any
) -> None:
    import anyio

    from leadperf.cache import PostgresCache, SqliteCache

    path = tmp_path / "cache.db"

    async def fill() -> None:
        async with SqliteCache(str(path), namespace=unique_name) as cache:
            await cache.set_many({f"k{i}": {"i": i} for i in range(5)}, ttl=600)

    anyio.run(fill)
    assert main(["migrate-cache", str(path), "--to", database_url]) == 0
    assert capsys.readouterr().out.startswith(f"Copied 5 live entries from {path}")

    async def read() -> dict[str, Any]:
        async with PostgresCache(database_url, namespace=unique_name) as pg:
            try:
                return await pg.get_many([f"k{i}" for i in range(5)])
            finally:
                await pg.clear()

    assert anyio.run(read) == {f"k{i}": {"i": i} for i in range(5)}
    assert main(["migrate-cache", str(tmp_path / "missing.db"), "--to", database_url]) == 2


def test_archive_moves_old_partitions(
    env: pytest.MonkeyPatch, database_url: str, unique_name: str, capsys: Any
) -> None:
    import psycopg

    from leadperf.optimize import Archiver

    archiver = Archiver(database_url, unique_name, archive_schema=f"{unique_name}_arch")
    archiver.create_table_sync("id bigint, created_at timestamptz NOT NULL")
    old = dt.datetime(2020, 1, 15, tzinfo=dt.UTC)
    archiver.ensure_partitions_sync(ahead=0, now=old)
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            conn.execute(
                f"INSERT INTO {unique_name} SELECT g, %s FROM generate_series(1, 7) g", (old,)
            )
            args = ["archive", unique_name, "--older-than-days", "30",
                    "--archive-schema", f"{unique_name}_arch"]  # fmt: skip
            assert main(args) == 0
            out = capsys.readouterr().out
            assert f"moved {unique_name}_p202001 (7 rows) to {unique_name}_arch" in out
            moved = conn.execute(
                f"SELECT count(*) FROM {unique_name}_arch.{unique_name}_p202001"
            ).fetchone()
            assert moved == (7,)
            assert main(args) == 0
            assert capsys.readouterr().out.startswith("Nothing to archive")
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {unique_name} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {unique_name}_arch CASCADE")


def test_scrape_and_analyze(tmp_env: pytest.MonkeyPatch, capsys: Any) -> None:
    assert main(["scrape", "not a url"]) == 1
    line = json.loads(capsys.readouterr().out)
    assert (line["ok"], line["url"]) == (False, "not a url")
    assert main(["analyze"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "balanced"
    assert os.environ.get("LEADPERF_PROFILE") is None


def _on_a_terminal(args: list[str], answer: bytes, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stdin and stdout on a pseudo-terminal; type ``answer``."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "leadperf", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    sent = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not sent and b"[y/N]" in seen:
            os.write(master, answer)
            sent = True
        if proc.poll() is not None and not ready:
            break
    os.close(master)
    return proc.wait(timeout=30), seen.decode(errors="replace")


def test_clear_cache_asks_on_a_terminal(env: pytest.MonkeyPatch, redis_url: str) -> None:
    # Only the "no" answer: "yes" would empty a namespace other tests share.
    environ = {**os.environ, "LEADPERF_CACHE_URL": redis_url}
    code, out = _on_a_terminal(["clear-cache"], b"n\n", environ)
    assert code == 1
    assert "Remove every key in namespace 'leadperf'? [y/N]" in out
    assert "Nothing removed." in out


def test_monitor_draws_a_table_on_a_terminal(tmp_env: pytest.MonkeyPatch) -> None:
    code, out = _on_a_terminal(
        ["monitor", "--samples", "2", "--interval", "0.05"], b"", dict(os.environ)
    )
    assert code == 0
    lines = [x for x in out.splitlines() if x.strip()]
    assert lines[0].split()[:3] == ["time", "cpu", "%"]
    assert "(Ctrl-C to stop)" in lines[0]
    assert len(lines) == 3
    assert not lines[1].lstrip().startswith("{")


def test_bad_config_files_exit_2_with_one_line(
    tmp_env: pytest.MonkeyPatch, tmp_path: Any, capsys: Any
) -> None:
    assert main(["--config", str(tmp_path / "missing.yaml"), "status"]) == 2
    assert capsys.readouterr().err.startswith("leadperf: error: cannot read settings file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("performance:\n  cache: {max_sise: 3}\n")
    assert main(["status", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "performance.cache.max_sise" in err
