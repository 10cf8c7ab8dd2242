"""Backend-specific behaviour, checked on the real stores: what the server holds."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import service_missing
from leadperf import Settings
from leadperf.cache import (
    MemoryCache,
    PostgresCache,
    RedisCache,
    SqliteCache,
    TieredCache,
    from_settings,
)
from leadperf.errors import CacheUnavailableError, ConfigError, SerializationError

pytestmark = pytest.mark.anyio

SETTINGS = Settings()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- memory -------------------------------------------------------------------------------


async def test_memory_lru_evicts_least_recently_used_and_counts() -> None:
    c = MemoryCache(max_size=3, settings=SETTINGS)
    await c.set_many({"a": 1, "b": 2, "c": 3})
    assert await c.get("a") == 1  # a is now the most recently used
    await c.set("d", 4)
    assert await c.get_many(["a", "b", "c", "d"]) == {"a": 1, "c": 3, "d": 4}
    await c.set("e", 5)
    assert not await c.exists("a") or not await c.exists("c")
    s = c.stats()
    assert s.evictions == 2
    assert s.size == 3
    with pytest.raises(ConfigError, match="max_size"):
        MemoryCache(max_size=0, settings=SETTINGS)
    assert MemoryCache(settings=Settings(cache={"max_size": 17})).max_size == 17


async def test_memory_size_excludes_expired_entries() -> None:
    c = MemoryCache(settings=SETTINGS)
    await c.set("short", 1, ttl=0.1)
    await c.set("long", 1, ttl=60)
    assert c.stats().size == 2
    await anyio.sleep(0.15)
    assert c.stats().size == 1
    assert c.stats().evictions == 0  # expiry is not an eviction


# -- redis --------------------------------------------------------------------------------


async def _monitor(redis_url: str, marker: str, commands: list[str], ready: anyio.Event) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.monitor() as m:
            ready.set()
            async for info in m.listen():
                if marker in info["command"]:
                    commands.append(info["command"])
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_clear_uses_scan_and_stays_in_namespace(
    redis_url: str, unique_name: str
) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_url)
    ns = unique_name + "[*]"  # glob characters in the namespace are literal
    outside = [f"{unique_name}other:k", f"{unique_name}[x]:k", f"{unique_name}:k", f"{ns}k"]
    for key in outside:
        await raw.set(key, b"keep", ex=60)
    commands: list[str] = []
    ready = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_monitor, redis_url, unique_name, commands, ready)
            await ready.wait()
            async with RedisCache(redis_url, namespace=ns, settings=SETTINGS) as c:
                await c.set_many({f"k{i}": i for i in range(30)}, ttl=60)
                assert len(await c.get_many([f"k{i}" for i in range(30)])) == 30
                assert await c.clear("k1*") == 11
                assert await c.clear() == 19
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
        for key in outside:
            assert await raw.get(key) == b"keep", key
        seen = " ".join(commands).upper()
        assert "SCAN" in seen
        assert "MGET" in seen
        assert '"KEYS"' not in seen
    finally:
        await raw.delete(*outside)
        await raw.aclose()


@pytest.mark.redis
async def test_redis_stores_header_and_expiry_on_server(redis_url: str, unique_name: str) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_url)
    async with RedisCache(redis_url, namespace=unique_name, settings=SETTINGS) as c:
        await c.set("k", b"payload", ttl=5)
        await c.set("j", {"a": 1}, ttl=0.5)
        assert await raw.get(f"{unique_name}:k") == b"\x01payload"
        assert 4000 < await raw.pttl(f"{unique_name}:k") <= 5000
        assert 0 < await raw.pttl(f"{unique_name}:j") <= 500
        await c.clear()
    await raw.aclose()


@pytest.mark.redis
async def test_redis_unreachable_fails_fast_and_counts(unique_name: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(CacheUnavailableError, match="cannot reach"):
        async with RedisCache(url, settings=SETTINGS):
            pass
    assert time.monotonic() - start < 3
    c = RedisCache(url, settings=SETTINGS)
    assert await c.get("k", "default") == "default"
    await c.set("k", 1)
    assert await c.get_many(["a", "b"]) == {}
    assert c.stats().errors == 3
    strict = RedisCache(url, raise_errors=True, settings=SETTINGS)
    with pytest.raises(CacheUnavailableError):
        await strict.get("k")
    await c.close()
    await strict.close()


def test_redis_repr_masks_password() -> None:
    c = RedisCache("redis://user:hunter2@127.0.0.1:6379/0", settings=SETTINGS)
    assert "hunter2" not in repr(c)
    assert "***" in repr(c)
    with pytest.raises(ConfigError, match="url"):
        RedisCache("http://127.0.0.1", settings=SETTINGS)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        RedisCache(settings=SETTINGS)


# -- postgres -----------------------------------------------------------------------------


def _pg(database_url: str, query: Any, params: tuple[Any, ...] = ()) -> list[Any]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.mark.postgres
async def test_postgres_cleanup_removes_expired_and_retention_old(
    database_url: str, unique_name: str
) -> None:
    from psycopg import sql

    table = sql.Identifier(unique_name)
    try:
        async with PostgresCache(
            database_url, table=unique_name, retention=3600, settings=SETTINGS
        ) as c:
            await c.set("expired", 1, ttl=0.1)
            await c.set("old", 2, ttl=10 * 24 * 3600)
            await c.set("fresh", 3, ttl=60)
            _pg(
                database_url,
                sql.SQL(
                    "UPDATE {} SET updated_at = now() - interval '2 hours' WHERE key = %s"
                ).format(table),
                ("leadperf:old",),
            )
            await anyio.sleep(0.15)
            assert await c.cleanup() == 2
            rows = _pg(database_url, sql.SQL("SELECT key FROM {}").format(table))
            assert rows == [("leadperf:fresh",)]
            assert await c.cleanup(retention=1) == 0
        # The table has a primary key on key and an index on expires_at.
        idx = _pg(
            database_url, "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (unique_name,)
        )
        defs = " ".join(r[0] for r in idx)
        assert "(key)" in defs
        assert "(expires_at)" in defs
    finally:
        _pg(database_url, sql.SQL("DROP TABLE IF EXISTS {}").format(table))


@pytest.mark.postgres
async def test_postgres_odd_table_and_schema_names_are_quoted(
    database_url: str, unique_name: str
) -> None:
    from psycopg import sql

    odd = f'{unique_name} "odd"; DROP TABLE x; --'
    schema = f"{unique_name}_Schema"
    _pg(database_url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        async with PostgresCache(
            database_url, table=odd, schema=schema, namespace="ns", settings=SETTINGS
        ) as c:
            await c.set("k", {"v": b"1"}, ttl=60)
            assert await c.get("k") == {"v": b"1"}
            assert await c.get_many(["k", "x"]) == {"k": {"v": b"1"}}
        rows = _pg(
            database_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = %s",
            (schema,),
        )
        assert rows == [(odd,)]
        stored = _pg(
            database_url,
            sql.SQL(
                "SELECT key, get_byte(value, 0), expires_at > now() + interval '50 seconds' FROM {}"
            ).format(sql.Identifier(schema, odd)),
        )
        assert stored == [("ns:k", 4, True)]  # msgpack header, TTL stored server side
    finally:
        _pg(database_url, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.postgres
async def test_postgres_unreachable_fails_fast(unique_name: str) -> None:
    dsn = f"postgresql://postgres:pw@127.0.0.1:{free_port()}/test"
    start = time.monotonic()
    c = PostgresCache(dsn, connect_timeout=1.0, settings=SETTINGS)
    with pytest.raises(CacheUnavailableError) as info:
        await c.open()
    assert time.monotonic() - start < 4
    assert "pw" not in str(info.value).replace("postgres", "")
    assert "pw@" not in repr(c)
    lazy = PostgresCache(dsn, connect_timeout=1.0, settings=SETTINGS)
    assert await lazy.get("k", "d") == "d"
    assert lazy.stats().errors == 1
    start = time.monotonic()
    assert await lazy.get("k", "d") == "d"  # no second connect wait right after a failure
    assert time.monotonic() - start < 0.5
    assert lazy.stats().errors == 2
    await lazy.close()
    await c.close()


@pytest.mark.postgres
async def test_postgres_settings_give_pool_sizes(database_url: str) -> None:
    s = Settings(cache={"pool_min_size": 1, "pool_max_size": 3}, database={"url": database_url})
    c = PostgresCache(settings=s)
    assert (c.min_size, c.max_size, c.dsn) == (1, 3, database_url)
    with pytest.raises(ConfigError, match="max_size"):
        PostgresCache(database_url, min_size=5, max_size=2, settings=SETTINGS)


# -- sqlite -------------------------------------------------------------------------------

_WRITER = """
import sys, anyio
from leadperf import Settings
from leadperf.cache import SqliteCache

async def main(path, tag, n):
    async with SqliteCache(path, settings=Settings()) as c:
        for i in range(n):
            await c.set(f"{tag}:{i}", {"tag": tag, "i": i}, ttl=60)
            if i % 10 == 0:
                await c.set_many({f"{tag}:batch{i}:{j}": j for j in range(5)}, ttl=60)
        assert await c.get(f"{tag}:0") == {"tag": tag, "i": 0}

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


async def test_sqlite_wal_and_two_processes_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SqliteCache(path, settings=SETTINGS) as c:
        await c.set("parent", "p")
        procs = [
            subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, "200"])
            for tag in ("a", "b")
        ]
        # The parent keeps reading while both children write.
        for _ in range(100):
            assert await c.get("parent") == "p"
            await anyio.sleep(0.005)
        for p in procs:
            assert await anyio.to_thread.run_sync(p.wait) == 0
        got = await c.get_many([f"{t}:{i}" for t in "ab" for i in range(200)])
        assert len(got) == 400
        assert got["b:199"] == {"tag": "b", "i": 199}
        assert c.stats().size == 1 + 400 + 2 * 20 * 5
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


_ADDER = """
import sys, anyio
from leadperf import Settings
from leadperf.cache import SqliteCache

async def main(path, tag):
    async with SqliteCache(path, settings=Settings()) as c:
        won = [i for i in range(150) if await c.add(f"job:{i}", tag, ttl=60)]
    print(len(won))

anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_sqlite_add_deduplicates_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    async with SqliteCache(path, settings=SETTINGS) as c:
        await c.set("warm", 1)  # create the file and table before the race
        procs = [
            subprocess.Popen([sys.executable, "-c", _ADDER, str(path), tag], stdout=subprocess.PIPE)
            for tag in ("a", "b", "c")
        ]
        outs = [await anyio.to_thread.run_sync(p.communicate) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0]
        assert sum(int(out.strip()) for out, _ in outs) == 150  # each job claimed once
        got = await c.get_many([f"job:{i}" for i in range(150)])
        assert len(got) == 150
        assert set(got.values()) <= {"a", "b", "c"}


async def test_sqlite_cleanup_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with SqliteCache(path, settings=SETTINGS) as c:
        await c.set("keep", "v", ttl=60)
        await c.set("gone", "v", ttl=0.1)
        await anyio.sleep(0.15)
        assert await c.cleanup() == 1
    async with SqliteCache(path, settings=SETTINGS) as again:
        assert await again.get("keep") == "v"
    bad = SqliteCache(tmp_path / "no" / "such" / "dir.db", settings=SETTINGS)
    with pytest.raises(CacheUnavailableError, match="directory"):
        await bad.open()


# -- tiered -------------------------------------------------------------------------------


class ThrowawayRedis:
    """A redis-server of our own on a free port, to stop, pause and restart at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server binary not found: apt-get install redis-server")
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.redis
async def test_redis_hung_server_times_out_as_a_miss(throwaway_redis: ThrowawayRedis) -> None:
    async with RedisCache(throwaway_redis.url, timeout=0.3, settings=SETTINGS) as c:
        await c.set("k", "v")
        throwaway_redis.pause()
        try:
            start = time.monotonic()
            assert await c.get("k", "default") == "default"
            await c.set("k", "new")
            assert time.monotonic() - start < 2
            assert c.stats().errors == 2
        finally:
            throwaway_redis.resume()
        assert await c.get("k") == "v"  # nothing half-written, connection replaced


@pytest.mark.redis
async def test_tiered_serves_local_while_remote_down_then_recovers(
    throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leadperf")
    url, start, stop = throwaway_redis.url, throwaway_redis.start, throwaway_redis.stop
    remote = RedisCache(url, settings=SETTINGS)
    tiered = TieredCache(MemoryCache(settings=SETTINGS), remote, retry_after=0.2)
    async with tiered:
        await tiered.set("a", "both", ttl=60)
        assert await remote.get("a") == "both"
        stop()
        assert await tiered.get("a") == "both"  # local hit: remote not needed
        await tiered.set("b", "local only", ttl=60)  # remote fails: counted, not raised
        assert await tiered.get("b") == "local only"
        assert await tiered.get("missing") is None
        errors_down = tiered.stats().errors
        assert errors_down >= 1
        outage = [r.getMessage() for r in caplog.records if r.name == "leadperf.cache"]
        # Logged when the remote goes down, not on every call while it is known down.
        assert 1 <= len(outage) <= errors_down
        assert "remote cache unreachable" in outage[0]
        start()
        deadline = time.monotonic() + 5
        while True:
            await tiered.set("c", "after", ttl=60)
            try:
                if await remote.get("c") == "after":
                    break
            except CacheUnavailableError:
                pass
            assert time.monotonic() < deadline, "tiered cache never recovered"
            await anyio.sleep(0.1)
        assert tiered.remote_available
        # A value only the remote holds is found and filled into local.
        await remote.set("r", "remote", ttl=60)
        assert await tiered.get("r") == "remote"
        assert await tiered.local.get("r") == "remote"
        assert tiered.stats().hit_rate > 0


@pytest.mark.redis
async def test_tiered_opens_with_remote_down(unique_name: str) -> None:
    remote = RedisCache(f"redis://127.0.0.1:{free_port()}/0", settings=SETTINGS)
    async with TieredCache(MemoryCache(settings=SETTINGS), remote, retry_after=0) as t:
        await t.set("k", "v")
        assert await t.get("k") == "v"
        assert await t.get_many(["k", "x"]) == {"k": "v"}
        assert await t.add("new", 1)
        assert t.stats().errors >= 4
    again = RedisCache(remote.url, settings=SETTINGS)
    strict = TieredCache(MemoryCache(settings=SETTINGS), again, raise_errors=True)
    with pytest.raises(CacheUnavailableError):
        await strict.open()
    await strict.close()
    assert strict.local.closed
    assert again.closed


@pytest.mark.redis
async def test_tiered_local_copy_never_outlives_remote_ttl(
    redis_url: str, unique_name: str
) -> None:
    remote = RedisCache(redis_url, namespace=unique_name, settings=SETTINGS)
    async with TieredCache(MemoryCache(default_ttl=3600, settings=SETTINGS), remote) as t:
        await remote.set("k", "v", ttl=0.3)
        assert await t.get("k") == "v"  # filled into local
        assert await t.get_many(["k"]) == {"k": "v"}
        await anyio.sleep(0.4)
        assert await t.get("k") is None
        assert await t.local.get("k") is None
        await t.clear()


# -- from_settings ------------------------------------------------------------------------


async def test_from_settings_builds_what_settings_describe(tmp_path: Path) -> None:
    mem = from_settings(Settings(cache={"max_size": 5, "default_ttl": 9.0}))
    assert isinstance(mem, MemoryCache)
    assert (mem.max_size, mem.default_ttl) == (5, 9.0)
    s = Settings(cache={"redis_enabled": True, "redis_url": "redis://127.0.0.1:6379/15"})
    tiered = from_settings(s)
    assert isinstance(tiered, TieredCache)
    assert isinstance(tiered.remote, RedisCache)
    url = f"sqlite:///{tmp_path}/c.db"
    lite = from_settings(Settings(cache={"url": url, "compression": "gzip"}))
    assert isinstance(lite, SqliteCache)
    assert lite.codec.compression == "gzip"
    async with lite:
        await lite.set("k", "x" * 5000)
    raw = sqlite3.connect(tmp_path / "c.db").execute("SELECT value FROM leadperf_cache").fetchone()
    assert raw[0][0] == 0x12  # gzip (1) << 4 | str (2)


@pytest.mark.redis
async def test_redis_more_callers_than_connections(redis_url: str, unique_name: str) -> None:
    async with RedisCache(
        redis_url, namespace=unique_name, max_connections=2, settings=SETTINGS
    ) as c:
        await c.set_many({f"k{i}": i for i in range(40)}, ttl=60)
        got: dict[int, Any] = {}

        async def worker(i: int) -> None:
            await c.set(f"w{i}", {"i": i}, ttl=60)
            got[i] = (await c.get(f"k{i}"), await c.get(f"w{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(worker, i)
        # A caller cancelled while waiting for a connection leaves the others unharmed.
        with anyio.move_on_after(0.001):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(c.get, f"k{i}")
        assert got == {i: (i, {"i": i}) for i in range(40)}
        assert await c.get_many(["k0", "k39"]) == {"k0": 0, "k39": 39}
        assert c.stats().errors == 0
        assert await c.clear() == 80


# -- bounds, hostile data and stuck neighbours ---------------------------------------------


class LoopLag:
    """A ticker task measuring how late the event loop runs it (the loop must stay free)."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.worst = 0.0
        self.ticks = 0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - before - self.period)
            self.ticks += 1


async def test_memory_max_bytes_evicts_by_size_and_refuses_a_huge_value(
    reliability: Any,
) -> None:
    c = MemoryCache(max_size=10_000, max_bytes=1_000_000, settings=SETTINGS)
    for i in range(30):
        await c.set(f"page{i}", b"x" * 100_000)
        assert c.size_bytes <= 1_000_000
    s = c.stats()
    assert s.evictions >= 20
    assert s.size is not None
    assert 0 < s.size <= 9
    assert await c.get("page29") == b"x" * 100_000  # the newest stay
    assert await c.get("page0") is None
    # Structured values are measured by their serialized size.
    await c.set("rows", [{"email": f"user{i}@example.com"} for i in range(2000)])
    assert c.size_bytes <= 1_000_000
    # One value over a quarter of the budget is refused and evicts nothing.
    before = (c.stats().size, c.size_bytes)
    with pytest.raises(SerializationError, match="max_bytes"):
        await c.set("huge", b"x" * 300_000)
    assert (c.stats().size, c.size_bytes) == before
    # The default budget refuses what the audit stored: a 1 GiB value (checked without
    # allocating one, through a budget of the same proportions).
    default = MemoryCache(settings=SETTINGS)
    assert default.max_bytes == 256 * 1024 * 1024
    with pytest.raises(SerializationError, match="max_value_size"):
        await default.set("big", b"x" * (16 * 1024 * 1024 + 1))
    assert default.size_bytes == 0
    await c.delete("rows")
    await c.clear()
    assert c.size_bytes == 0
    with pytest.raises(ConfigError, match="max_bytes"):
        MemoryCache(max_bytes=0, settings=SETTINGS)
    reliability.record(
        "cache",
        "MemoryCache fed 30 x 100 KB values and one 300 KB value with max_bytes=1 MB",
        "held bytes never exceed max_bytes; one value over a quarter of it is refused",
        f"held at most 1,000,000 bytes ({s.evictions} evictions); the 300 KB value raised "
        "SerializationError and evicted nothing",
    )


async def test_sqlite_lock_held_by_another_process_is_waited_for_off_the_loop(
    tmp_path: Path, reliability: Any
) -> None:
    path = tmp_path / "c.db"
    lag = LoopLag()
    async with SqliteCache(path, busy_timeout=5, settings=SETTINGS) as c:
        await c.set("before", 1)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
                "db.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(1.5)\n"
                "db.execute('COMMIT')\n",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"locked"
            async with anyio.create_task_group() as tg:
                tg.start_soon(lag.run)
                started = time.perf_counter()
                await c.set("during", "written once the lock is free")
                waited = time.perf_counter() - started
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        finally:
            holder.wait(10)
        assert await c.get("during") == "written once the lock is free"
        assert c.stats().errors == 0
    assert waited > 0.3  # it really waited for the other process
    # Blocking would show as a lag of the whole 1.5 s; 0.5 s leaves room for a busy machine.
    assert lag.worst < 0.5, f"event loop blocked for {lag.worst:.3f} s"
    assert lag.ticks > 10
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM leadperf_cache").fetchone()[0] == 2
    db.close()
    reliability.record(
        "cache",
        "SqliteCache.set while another process holds the write lock for 1.5 s",
        "the lock is waited for off the event loop; the write lands when it is free",
        f"set waited {waited:.2f} s; worst event-loop lag {lag.worst * 1000:.0f} ms "
        f"over {lag.ticks} ticks; the row is in the file",
    )


async def test_sqlite_lock_past_busy_timeout_names_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SqliteCache(path, settings=SETTINGS):
        pass
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        strict = SqliteCache(path, busy_timeout=0.2, raise_errors=True, settings=SETTINGS)
        async with strict:
            with pytest.raises(CacheUnavailableError, match="busy_timeout") as info:
                await strict.set("k", 1)
            assert "check the URL" not in str(info.value)
        lenient = SqliteCache(path, busy_timeout=0.2, settings=SETTINGS)
        async with lenient:
            await lenient.set("k", 1)
            assert lenient.stats().errors == 1
            assert await lenient.get("k") is None  # readers are not blocked in WAL mode
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_sqlite_truncated_file_is_refused_not_restarted(
    tmp_path: Path, reliability: Any
) -> None:
    path = tmp_path / "c.db"
    async with SqliteCache(path, settings=SETTINGS) as c:
        await c.set("lead", "ada")
    with open(path, "wb"):
        pass  # truncated to 0 bytes, as a full disk or a bad copy leaves it
    broken = SqliteCache(path, settings=SETTINGS)
    with pytest.raises(CacheUnavailableError, match="empty") as info:
        await broken.open()
    assert path.stat().st_size == 0  # left as found, for the operator to look at
    lenient = SqliteCache(path, settings=SETTINGS)
    assert await lenient.get("lead", "miss") == "miss"
    assert lenient.stats().errors == 1
    await broken.close()
    await lenient.close()
    # A fresh path still creates a complete cache file, never an empty one.
    fresh = tmp_path / "new.db"
    async with SqliteCache(fresh, settings=SETTINGS) as c:
        assert fresh.stat().st_size > 0
        await c.set("k", 1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    reliability.record(
        "cache",
        "SQLite cache file truncated to 0 bytes",
        "refused with a clear error, never reopened as an empty cache",
        f"open raised CacheUnavailableError ({str(info.value)[-60:]!r}); file left at 0 bytes",
    )


@pytest.mark.redis
async def test_tiered_corrupt_remote_entry_is_a_miss_not_an_outage(
    redis_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    caplog.set_level(logging.WARNING, logger="leadperf")
    remote = RedisCache(redis_url, namespace=unique_name, settings=SETTINGS)
    raw = redis.Redis.from_url(redis_url)
    try:
        async with TieredCache(MemoryCache(settings=SETTINGS), remote, retry_after=30) as t:
            await remote.set("good", "from remote")
            raw.set(f"{unique_name}:bad", b"\x22not brotli at all", px=60_000)
            assert await t.get("bad", "miss") == "miss"
            assert t.remote_available  # the remote is not treated as down
            assert await t.get("good") == "from remote"  # still read from the remote
            assert await t.get_many(["bad", "good"]) == {"good": "from remote"}
            assert t.stats().errors == 2
            assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
            strict = TieredCache(
                MemoryCache(settings=SETTINGS),
                RedisCache(redis_url, namespace=unique_name, settings=SETTINGS),
                raise_errors=True,
            )
            async with strict:
                with pytest.raises(SerializationError):
                    await strict.get("bad")
            await t.clear()
    finally:
        raw.close()


def test_redis_masks_password_query_parameter_in_repr_and_errors() -> None:
    port = free_port()
    c = RedisCache(f"redis://127.0.0.1:{port}/0?password=hunter2", settings=SETTINGS)
    assert "hunter2" not in repr(c)
    assert "password=***" in repr(c)

    async def fail() -> str:
        with pytest.raises(CacheUnavailableError) as info:
            await c.open()
        await c.close()
        return str(info.value)

    message = anyio.run(fail)
    assert "hunter2" not in message
    with pytest.raises(ConfigError) as bad:
        RedisCache("http://u:hunter2@h/0?password=hunter3", settings=SETTINGS)
    assert "hunter2" not in str(bad.value)
    assert "hunter3" not in str(bad.value)


# -- expiry jobs --------------------------------------------------------------------------


async def _poll(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await anyio.sleep(0.05)
    return bool(check())


async def test_sqlite_expiry_job_purges_one_process_at_a_time(
    tmp_path: Path, reliability: Any
) -> None:
    path = tmp_path / "c.db"

    def rows() -> int:
        db = sqlite3.connect(path)
        try:
            return int(db.execute("SELECT count(*) FROM leadperf_cache").fetchone()[0])
        finally:
            db.close()

    async with SqliteCache(path, cleanup_interval=None, settings=SETTINGS) as setup:
        await setup.set_many({f"k{i}": i for i in range(50)}, ttl=0.05)
        await setup.set("keep", 1, ttl=60)
    # Another process holds the job's lease: nobody else purges.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "INSERT OR REPLACE INTO leadperf_cache_jobs VALUES ('expiry', 'other', ?)",
        (time.time() + 3600,),
    )
    async with SqliteCache(path, cleanup_interval=0.1, settings=SETTINGS) as c:
        assert c.expiry is not None
        assert await _poll(lambda: c.expiry is not None and c.expiry.skipped >= 3, 5)
        assert rows() == 51
        assert c.expiry.runs == 0
        db.execute("UPDATE leadperf_cache_jobs SET until = 0")  # the other holder is gone
        started = time.monotonic()
        assert await _poll(lambda: rows() == 1, 5)
        took = time.monotonic() - started
        assert await _poll(lambda: c.expiry is not None and c.expiry.removed == 50, 5)
        assert await c.get("keep") == 1
    db.close()
    reliability.record(
        "cache",
        "SqliteCache expiry job with a lease held by another process, then free",
        "expired rows removed by one process at a time, without any call",
        f"no purge while the lease was held; 50 expired rows gone {took:.2f} s after it "
        "was freed; the live row kept",
    )


@pytest.mark.postgres
async def test_postgres_expiry_job_runs_under_an_advisory_lock(
    database_url: str, unique_name: str, reliability: Any
) -> None:
    import psycopg
    from psycopg import sql

    table = sql.Identifier(unique_name)

    def rows() -> int:
        return int(_pg(database_url, sql.SQL("SELECT count(*) FROM {}").format(table))[0][0])

    try:
        async with PostgresCache(
            database_url, table=unique_name, cleanup_interval=None, settings=SETTINGS
        ) as setup:
            assert setup.retention == 30 * 24 * 3600  # the default retention
            await setup.set_many({f"k{i}": i for i in range(40)}, ttl=0.05)
            await setup.set("keep", 1, ttl=10 * 24 * 3600)
            await setup.set("stale", 1, ttl=90 * 24 * 3600)
        _pg(
            database_url,
            sql.SQL("UPDATE {} SET updated_at = now() - interval '31 days' WHERE key = %s").format(
                table
            ),
            ("leadperf:stale",),
        )
        lock = f"leadperf-cache-expiry:None.{unique_name}"
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
            async with PostgresCache(
                database_url, table=unique_name, cleanup_interval=0.1, settings=SETTINGS
            ) as c:
                job = c.expiry
                assert job is not None
                assert await _poll(lambda: job.skipped >= 3, 5)
                assert rows() == 42
                assert job.runs == 0
                other.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
                started = time.monotonic()
                assert await _poll(lambda: rows() == 1, 5)
                took = time.monotonic() - started
                assert await c.get("keep") == 1
                assert await _poll(lambda: job.removed == 41, 5)
    finally:
        _pg(database_url, sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    reliability.record(
        "cache",
        "PostgresCache expiry job while another process holds the table's advisory lock",
        "expired and 30-day-old rows removed by one process at a time, without any call",
        f"no purge while the lock was held; 40 expired rows and 1 row unwritten for 31 days "
        f"gone {took:.2f} s after it was released; the live row kept",
    )
