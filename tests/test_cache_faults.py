"""Caches under server faults: a Redis SIGKILLed and restarted, PostgreSQL behind a frozen
or refusing network, backends terminated. Every server and proxy here is the test's own,
on 127.0.0.1; each test records what it observed for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from conftest import service_missing
from leadperf import Settings
from leadperf.cache import MemoryCache, PostgresCache, RedisCache, TieredCache
from test_cache_backends import ThrowawayRedis

pytestmark = pytest.mark.anyio

SETTINGS = Settings()


# -- a TCP proxy that can freeze (stop relaying, keep sockets open) or refuse ---------------


class FreezableProxy:
    """Relays 127.0.0.1:<port> to ``target``; :meth:`freeze` stalls every byte both ways
    (sockets stay open, as behind a dead switch), :meth:`refuse` closes everything and stops
    listening (connections refused), :meth:`listen` serves again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.listen()
        self._thread.start()

    def listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.setblocking(False)
        with self._lock:
            self._listener = sock

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            listener.close()
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self.refuse()
        self._thread.join(5)

    def _serve(self) -> None:
        buf: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
                pairs = list(self._pairs)
            sel = selectors.DefaultSelector()
            if listener is not None:
                # refuse() may close it between the read above and here: then it is
                # simply not served this round (an escaping error would end the thread).
                with contextlib.suppress(ValueError, KeyError, OSError):
                    sel.register(listener, selectors.EVENT_READ)
            if not self.frozen.is_set():
                for a, b in pairs:
                    buf[a], buf[b] = b, a
                    with contextlib.suppress(ValueError, KeyError, OSError):
                        sel.register(a, selectors.EVENT_READ)
                        sel.register(b, selectors.EVENT_READ)
            try:
                events = sel.select(0.02)
            except (OSError, ValueError):
                events = []
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    self._accept(listener)
                    continue
                if self.frozen.is_set():
                    break
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                peer = buf.get(sock)
                if peer is None:
                    continue
                if not data:
                    self._drop(sock, peer)
                    continue
                with contextlib.suppress(OSError):
                    peer.sendall(data)
            sel.close()
            if self.frozen.is_set():
                time.sleep(0.01)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._pairs = [p for p in self._pairs if a not in p]
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[tuple[FreezableProxy, str]]:
    parts = urlsplit(database_url)
    proxy = FreezableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    via = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    try:
        yield proxy, via
    finally:
        proxy.close()


def _drop_table(database_url: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_cache_through_a_frozen_network_misses_after_its_timeout(
    pg_proxy: tuple[FreezableProxy, str], database_url: str, unique_name: str, reliability: Any
) -> None:
    proxy, via = pg_proxy
    timeout = 1.0
    try:
        async with PostgresCache(
            via,
            table=unique_name,
            timeout=timeout,
            min_size=1,
            max_size=2,
            cleanup_interval=None,
            settings=SETTINGS,
        ) as c:
            await c.set("lead", "ada")
            assert await c.get("lead") == "ada"
            proxy.freeze()
            took = []
            for _ in range(3):
                started = time.monotonic()
                assert await c.get("lead", "miss") == "miss"
                took.append(time.monotonic() - started)
            started = time.monotonic()
            await c.set("other", 1)  # a write through the frozen network: counted, bounded
            took.append(time.monotonic() - started)
            assert max(took) < timeout + 1.0, took
            assert c.stats().errors == 4
            proxy.thaw()
            thawed = time.monotonic()
            while await c.get("lead", "miss") != "ada":
                assert time.monotonic() - thawed < 10, "never recovered after the thaw"
                await anyio.sleep(0.05)
            recovered = time.monotonic() - thawed
    finally:
        _drop_table(database_url, unique_name)
    reliability.record(
        "cache",
        "PostgresCache get/set through a frozen TCP proxy (timeout=1 s)",
        "every call is a miss or a counted error after its timeout",
        f"calls returned after {min(took):.2f}-{max(took):.2f} s, 4 errors counted; "
        f"reads served again {recovered:.2f} s after the network thawed",
    )


@pytest.mark.postgres
async def test_postgres_cache_recovers_quickly_after_refused_connections(
    pg_proxy: tuple[FreezableProxy, str], database_url: str, unique_name: str, reliability: Any
) -> None:
    proxy, via = pg_proxy
    try:
        async with PostgresCache(
            via,
            table=unique_name,
            timeout=1.0,
            min_size=2,
            max_size=4,
            cleanup_interval=None,
            settings=SETTINGS,
        ) as c:
            await c.set("lead", "ada")
            proxy.refuse()  # every connection reset, new ones refused
            outage_started = time.monotonic()
            failed = 0
            while time.monotonic() - outage_started < 3.0:
                started = time.monotonic()
                if await c.get("lead", "miss") == "miss":
                    failed += 1
                assert time.monotonic() - started < 2.0
                await anyio.sleep(0.1)
            assert failed > 0
            proxy.listen()
            back = time.monotonic()
            while await c.get("lead", "miss") != "ada":
                assert time.monotonic() - back < 10, "never recovered"
                await anyio.sleep(0.05)
            recovery = time.monotonic() - back
            assert recovery < 5.0
    finally:
        _drop_table(database_url, unique_name)
    reliability.record(
        "cache",
        "PostgresCache while its server refuses connections for 3 s, then accepts again",
        "calls are misses within their timeout during the outage; service resumes within seconds",
        f"{failed} calls were misses during the outage; first hit {recovery:.2f} s after "
        "the server accepted connections again",
    )


@pytest.mark.postgres
async def test_postgres_terminated_backends_are_replaced_before_callers_see_them(
    database_url: str, unique_name: str, reliability: Any
) -> None:
    import psycopg

    try:
        async with PostgresCache(
            database_url,
            table=unique_name,
            min_size=3,
            max_size=3,
            cleanup_interval=None,
            settings=SETTINGS,
        ) as c:
            await c.set("lead", "ada")
            async with anyio.create_task_group() as tg:  # touch all 3 pooled connections
                for _ in range(3):
                    tg.start_soon(c.get, "lead")
            killed = 0
            for _ in range(3):
                with psycopg.connect(database_url, autocommit=True) as admin:
                    rows = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                        (f"%{unique_name}%",),
                    ).fetchall()
                killed += sum(1 for (ok,) in rows if ok)
                await anyio.sleep(0.1)  # the termination notice reaches the sockets
                for _ in range(5):
                    assert await c.get("lead") == "ada"
            assert killed >= 3
            assert c.stats().errors == 0
    finally:
        _drop_table(database_url, unique_name)
    reliability.record(
        "cache",
        f"{killed} PostgreSQL backends of a PostgresCache pool terminated, in 3 rounds",
        "a dead pooled connection is replaced before a caller gets it",
        "15 gets after the terminations all hit; 0 errors counted",
    )


@pytest.mark.postgres
async def test_postgres_statement_blocked_by_a_lock_is_bounded_by_the_timeout(
    database_url: str, unique_name: str, reliability: Any
) -> None:
    import psycopg
    from psycopg import sql

    try:
        async with PostgresCache(
            database_url,
            table=unique_name,
            timeout=1.0,
            cleanup_interval=None,
            settings=SETTINGS,
        ) as c:
            await c.set("lead", "old")
            with psycopg.connect(database_url) as locker:  # holds the row lock, uncommitted
                locker.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE key = %s FOR UPDATE").format(
                        sql.Identifier(unique_name)
                    ),
                    ("leadperf:lead",),
                )
                started = time.monotonic()
                await c.set("lead", "new")
                took = time.monotonic() - started
                deadline = time.monotonic() + 1.0
                while True:  # the server may take a moment to abort it; never the lock's life
                    waiting = locker.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE %s",
                        (f"%{unique_name}%",),
                    ).fetchone()
                    if waiting == (0,) or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                locker.rollback()
            assert took < 2.0
            assert c.stats().errors == 1
            assert waiting == (0,)  # the server is not still running the abandoned statement
            assert await c.get("lead") == "old"  # nothing half-written
    finally:
        _drop_table(database_url, unique_name)
    reliability.record(
        "cache",
        "PostgresCache.set blocked by another transaction's row lock (timeout=1 s)",
        "the statement is aborted at the timeout; the call is a counted error",
        f"set returned after {took:.2f} s with 1 error; no statement left waiting on the "
        "server; the old value kept",
    )


# -- Redis ----------------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server binary not found: apt-get install redis-server")
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Load:
    """Calls a cache in a loop, recording how long each call took and what it returned."""

    def __init__(self, cache: Any, key: str) -> None:
        self.cache = cache
        self.key = key
        self.calls: list[tuple[float, float, Any]] = []  # (started, took, result)
        self.raised: list[BaseException] = []

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                result = await self.cache.get(self.key, "miss")
                await self.cache.set(self.key + "-w", started)
            except Exception as exc:
                self.raised.append(exc)
                result = "raised"
            self.calls.append((started, time.monotonic() - started, result))
            await anyio.sleep(0.01)


@pytest.mark.redis
async def test_redis_sigkill_mid_run_and_restart(
    own_redis: ThrowawayRedis, reliability: Any
) -> None:
    plain = RedisCache(own_redis.url, connect_timeout=0.5, timeout=0.5, settings=SETTINGS)
    tiered = TieredCache(
        MemoryCache(settings=SETTINGS),
        RedisCache(own_redis.url, connect_timeout=0.5, timeout=0.5, settings=SETTINGS),
        retry_after=0.2,
    )
    async with plain, tiered:
        await plain.set("k", "v", ttl=600)
        await tiered.set("t", "tv", ttl=600)
        loads = [Load(plain, "k"), Load(tiered, "t")]
        async with anyio.create_task_group() as tg:
            for load in loads:
                tg.start_soon(load.run)
            await anyio.sleep(0.3)
            assert own_redis.proc is not None
            own_redis.proc.kill()  # SIGKILL: no goodbye on any connection
            own_redis.proc.wait(5)
            killed_at = time.monotonic()
            await anyio.sleep(1.5)
            own_redis.start()  # same port, empty (no persistence)
            restarted_at = time.monotonic()
            deadline = restarted_at + 10
            plain_back = tiered_back = None
            while plain_back is None or tiered_back is None:
                assert time.monotonic() < deadline, "did not recover after the restart"
                now = time.monotonic()
                if plain_back is None and await plain.exists("k-w"):
                    plain_back = now - restarted_at
                if tiered_back is None and await tiered.remote.exists("t-w"):
                    tiered_back = now - restarted_at
                await anyio.sleep(0.02)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    plain_load, tiered_load = loads
    for load in loads:
        assert not load.raised, load.raised[:1]
    during = [c for c in plain_load.calls if killed_at <= c[0] < restarted_at]
    assert during
    assert all(r == "miss" for _, _, r in during)
    worst = max(t for _, t, _ in during)
    assert worst < 2.0  # connect_timeout + timeout, per get + set pair, with room
    tiered_during = [c for c in tiered_load.calls if killed_at <= c[0] < restarted_at]
    # The tiered cache served its local copy through the whole outage.
    assert tiered_during
    assert all(r == "tv" for _, _, r in tiered_during)
    assert plain.stats().errors > 0
    assert tiered.stats().errors > 0
    assert plain_back is not None
    assert tiered_back is not None
    assert plain_back < 3.0
    assert tiered_back < 3.0
    reliability.record(
        "cache",
        "Redis SIGKILLed mid-run for 1.5 s, then restarted empty on the same port",
        "RedisCache calls are misses within their timeouts; TieredCache serves local; "
        "both resume writing to Redis by themselves",
        f"RedisCache: {len(during)} get+set pairs during the outage, all misses, worst "
        f"{worst:.2f} s, writes reached Redis {plain_back:.2f} s after the restart; "
        f"TieredCache: {len(tiered_during)} gets all served from local, remote writes "
        f"resumed {tiered_back:.2f} s after the restart; nothing raised",
    )
