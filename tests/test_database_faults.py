"""DatabaseOptimizer under faults: backends terminated mid-upsert, a frozen network, refusals.

Everything runs against the real PostgreSQL server; the network faults go through a tiny
TCP proxy of our own on 127.0.0.1 (the shared server itself is never stopped).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from psycopg import sql

from leadperf.config import Settings
from leadperf.errors import BulkUpsertError, DatabaseUnavailableError
from leadperf.optimize._pg_pool import CHECK_TIMEOUT, CLIENT_GRACE
from leadperf.optimize.database import DatabaseOptimizer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

AREA = "database"


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream port; can freeze or refuse on demand.

    ``freeze()`` stops moving bytes in both directions while keeping every socket open (a
    network that silently stops answering); ``refuse()`` closes the listener and every
    connection (a server that went away); ``listen()`` accepts again on the same port.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.frozen = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    def listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.05)
        try:
            while True:
                if self.frozen.is_set():
                    time.sleep(0.01)
                    continue
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def refuse(self) -> None:
        if self._listener is not None:
            # shutdown() first: a bare close() leaves the accept() blocked in the other
            # thread holding the socket, and the port keeps accepting.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.thaw()
        self.refuse()
        for thread in self._threads:
            thread.join(timeout=2)


def with_port(url: str, port: int, app: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    query = f"{parts.query}&application_name={app}" if parts.query else f"application_name={app}"
    return urlunsplit((parts.scheme, netloc_new, parts.path, query, ""))


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(database_url)
    p = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    p.listen()
    yield p
    p.close()


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def table(database_url: str, unique_name: str) -> Iterator[str]:
    with admin(database_url) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY, "
                "email text PRIMARY KEY, name text NOT NULL, n int)"
            ).format(sql.Identifier(unique_name))
        )
    yield unique_name
    with admin(database_url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(unique_name)))


def rows(n: int, run: str) -> list[dict[str, Any]]:
    return [{"email": f"lead{i}@x.example", "name": f"{run} {i}", "n": i} for i in range(n)]


def app_dsn(url: str, app: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={app}"


def terminate(url: str, app: str) -> int:
    with admin(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (app,),
        ).fetchone()
    return int(row[0]) if row else 0


def batches_in_table(url: str, table: str, batch_size: int) -> dict[int, int]:
    with admin(url) as conn:
        found = conn.execute(
            sql.SQL(
                "SELECT substring(email from 'lead([0-9]+)@')::int / %s AS b, count(*) "
                "FROM {} GROUP BY b"
            ).format(sql.Identifier(table)),
            (batch_size,),
        ).fetchall()
    return {int(b): int(n) for b, n in found}


def committed_from(message: str) -> tuple[set[int], int]:
    match = re.search(r"batches ([\d, -]+) \((\d+) rows\) were committed", message)
    if match is None:
        assert "no batch was committed" in message or "nothing was written" in message, message
        return set(), 0
    return parse_ranges(match.group(1)), int(match.group(2))


def parse_ranges(text: str) -> set[int]:
    """``"0-2, 5"`` -> ``{0, 1, 2, 5}``."""
    indexes: set[int] = set()
    for part in text.split(", "):
        low, _, high = part.partition("-")
        indexes.update(range(int(low), int(high or low) + 1))
    return indexes


async def wait_for(check: Any, *, timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not await anyio.to_thread.run_sync(check):
            await anyio.sleep(0.02)


STALL = """
CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email IN ('lead55000@x.example', 'lead65000@x.example') THEN
        PERFORM pg_sleep(60);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stall BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}();
"""


@pytest.mark.parametrize("atomic", [False, True], ids=["per-batch", "atomic"])
async def test_backends_terminated_mid_upsert(
    database_url: str, table: str, unique_name: str, atomic: bool, reliability: Any
) -> None:
    total, batch_size = 200_000, 10_000
    app = f"lp_{unique_name}"[:60]
    fn = sql.Identifier(f"{unique_name}_stall")
    with admin(database_url) as conn:
        # Batches 5 and 6 stall on one row each, so the termination always lands while
        # batches are in flight, with earlier ones committed (atomic: nothing committed).
        conn.execute(sql.SQL(STALL).format(fn=fn, table=sql.Identifier(table)))
    error: list[BaseException] = []
    async with DatabaseOptimizer(
        app_dsn(database_url, app), pool_size=2, settings=Settings()
    ) as db:

        async def upsert() -> None:
            try:
                await db.bulk_upsert(
                    table, rows(total, "first"), batch_size=batch_size, atomic=atomic
                )
            except BulkUpsertError as exc:
                error.append(exc)

        def stalled() -> bool:
            with admin(database_url) as conn:
                found = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event = 'PgSleep'",
                    (app,),
                ).fetchone()
            return bool(found and found[0] == (1 if atomic else 2))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(upsert)
                await wait_for(stalled, timeout=60, what="batches in flight")
                killed = terminate(database_url, app)
        finally:
            with admin(database_url) as conn:
                conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} CASCADE").format(fn))
        assert killed >= 1
        assert len(error) == 1
        message = str(error[0])
        reported, reported_rows = committed_from(message)
        in_table = batches_in_table(database_url, table, batch_size)
        # All or nothing per batch, and the report is exactly what the table holds.
        assert all(n == batch_size for n in in_table.values()), in_table
        assert set(in_table) == reported
        assert sum(in_table.values()) == reported_rows
        assert reported == (set() if atomic else {0, 1, 2, 3, 4})
        started = time.monotonic()
        again = await db.bulk_upsert(table, rows(total, "second"), batch_size=batch_size)
        retry_s = time.monotonic() - started
    assert (again.inserted, again.updated) == (total - reported_rows, reported_rows)
    with admin(database_url) as conn:
        count = conn.execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE name LIKE 'second%%') "
                "FROM {}"
            ).format(sql.Identifier(table))
        ).fetchone()
    assert count == (total, total, total)
    mode = "atomic=True" if atomic else "atomic=False, concurrency=2"
    reliability.record(
        AREA,
        f"pg_terminate_backend of every backend mid-bulk_upsert ({mode}, "
        f"{total:,} rows in batches of {batch_size:,}, batches in flight)",
        "each batch all-or-nothing; the error reports exactly what was committed; "
        "a retry writes the rest without duplicates",
        f"{killed} backends terminated; error reported {reported_rows:,} rows in "
        f"{len(reported)} batches committed, table held {sum(in_table.values()):,}; "
        f"retry {retry_s:.2f}s: {again.inserted:,} inserted + {again.updated:,} updated, "
        f"table {count[0]:,} rows, 0 duplicates",
    )


@pytest.fixture
async def proxied(
    proxy: TcpProxy, database_url: str, unique_name: str
) -> AsyncIterator[DatabaseOptimizer]:
    dsn = with_port(database_url, proxy.port, f"lp_{unique_name}"[:60])
    async with DatabaseOptimizer(
        dsn,
        pool_size=3,  # more than one idle connection to lose, and to get back
        max_overflow=0,
        pool_timeout=2,
        statement_timeout=1,
        settings=Settings(),
    ) as db:
        yield db


async def test_frozen_network_bounds_every_call(
    proxied: DatabaseOptimizer, proxy: TcpProxy, table: str, reliability: Any
) -> None:
    db = proxied
    assert await db.fetch("SELECT 1 AS one") == [{"one": 1}]
    # Give up bound: waiting for a checked connection, then one statement's answer.
    bound = (2 + 2 * CHECK_TIMEOUT + CLIENT_GRACE) + (1 + CLIENT_GRACE) + 1
    proxy.freeze()
    observed = []
    for call in ("fetch", "bulk_upsert"):
        started = time.monotonic()
        attempt = db.fetch("SELECT 1") if call == "fetch" else db.bulk_upsert(table, rows(9, "x"))
        with pytest.raises((DatabaseUnavailableError, BulkUpsertError)) as info:
            await attempt
        elapsed = time.monotonic() - started
        assert elapsed < bound, (call, elapsed)
        assert "within" in str(info.value) or "no answer" in str(info.value)
        observed.append(f"{call} raised {type(info.value).__name__} after {elapsed:.1f}s")
    proxy.thaw()
    started = time.monotonic()
    with anyio.fail_after(15):
        while True:
            try:
                assert await db.fetch("SELECT 2 AS two") == [{"two": 2}]
                break
            except DatabaseUnavailableError:
                await anyio.sleep(0.05)
    recovered = time.monotonic() - started
    result = await db.bulk_upsert(table, rows(100, "x"))
    assert result.inserted == 100
    # The whole pool is usable again, not one connection: three callers at once.
    answers: list[Any] = []

    async def hold() -> None:
        answers.extend(await db.fetch("SELECT 1 AS one FROM pg_sleep(0.2)"))

    with anyio.fail_after(bound):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(hold)
    assert answers == [{"one": 1}] * 3
    reliability.record(
        AREA,
        "network to PostgreSQL frozen (own TCP proxy stops moving bytes, sockets open)",
        f"every DatabaseOptimizer call gives up within {bound:.0f}s (pool_timeout=2, "
        "statement_timeout=1) with DatabaseUnavailableError; works again once it thaws",
        "; ".join(observed) + f"; first success {recovered:.2f}s after the thaw, then 3 "
        "concurrent callers all served",
    )


async def test_refused_connections_recover_quickly(
    proxied: DatabaseOptimizer, proxy: TcpProxy, reliability: Any
) -> None:
    db = proxied
    assert await db.fetch("SELECT 1 AS one") == [{"one": 1}]
    proxy.refuse()
    failures = 0
    started = time.monotonic()
    while time.monotonic() - started < 4:  # long enough for the pool's backoff to grow
        with pytest.raises(DatabaseUnavailableError) as info:
            await db.fetch("SELECT 1")
        assert "accepts connections" in str(info.value) or "connect" in str(info.value)
        failures += 1
    proxy.listen()
    back = time.monotonic()
    with anyio.fail_after(15):
        while True:
            try:
                assert await db.fetch("SELECT 3 AS three") == [{"three": 3}]
                break
            except DatabaseUnavailableError:
                await anyio.sleep(0.05)
    recovered = time.monotonic() - back
    assert recovered < 3.0
    reliability.record(
        AREA,
        "PostgreSQL refusing connections for 4 s (own TCP proxy closed), then back",
        "calls fail with DatabaseUnavailableError while it is down; the pool is usable "
        "again within about a second of the server's return",
        f"{failures} calls failed while down; first success {recovered:.2f}s after the "
        "port listened again",
    )


async def test_terminated_idle_backends_fail_no_caller(
    database_url: str, unique_name: str, reliability: Any
) -> None:
    app = f"lp_{unique_name}"[:60]
    async with DatabaseOptimizer(
        app_dsn(database_url, app), pool_size=4, max_overflow=0, settings=Settings()
    ) as db:
        errors = 0
        killed = 0
        started = time.monotonic()
        for _ in range(3):
            killed += terminate(database_url, app)
            for _ in range(8):
                try:
                    assert await db.fetch("SELECT 1 AS one") == [{"one": 1}]
                except DatabaseUnavailableError:
                    errors += 1
        elapsed = time.monotonic() - started
        lost = db.stats().connections_lost
    assert killed >= 9
    assert errors == 0
    assert lost >= 3
    reliability.record(
        AREA,
        "every idle pooled backend terminated (pg_terminate_backend), three times",
        "a dead connection is replaced before a caller gets it: no caller fails",
        f"{killed} backends terminated, 24 calls, {errors} errors, {lost} connections "
        f"found dead and replaced, {elapsed:.2f}s in all",
    )


STALL_AT_COMMIT = """
CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.email = 'lead15@x.example' THEN
        PERFORM pg_sleep(60);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER stall AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION {fn}();
"""


async def test_backend_terminated_during_commit_is_reported_from_the_server(
    database_url: str, table: str, unique_name: str, reliability: Any
) -> None:
    app = f"lp_{unique_name}"[:60]
    fn = sql.Identifier(f"{unique_name}_commit")
    with admin(database_url) as conn:
        # Deferred: runs inside COMMIT of batch 1, where the client cannot tell whether the
        # server committed when the connection dies; the executor must ask the server.
        conn.execute(sql.SQL(STALL_AT_COMMIT).format(fn=fn, table=sql.Identifier(table)))
    error: list[BulkUpsertError] = []
    try:
        async with DatabaseOptimizer(
            app_dsn(database_url, app), pool_size=1, settings=Settings()
        ) as db:

            async def upsert() -> None:
                try:
                    await db.bulk_upsert(table, rows(30, "x"), batch_size=10, concurrency=1)
                except BulkUpsertError as exc:
                    error.append(exc)

            def in_commit() -> bool:
                with admin(database_url) as conn:
                    found = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                        "AND wait_event = 'PgSleep' AND query = 'COMMIT'",
                        (app,),
                    ).fetchone()
                return bool(found and found[0])

            async with anyio.create_task_group() as tg:
                tg.start_soon(upsert)
                await wait_for(in_commit, timeout=30, what="batch 1 in COMMIT")
                killed = terminate(database_url, app)
    finally:
        with admin(database_url) as conn:
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {} CASCADE").format(fn))
    assert len(error) == 1
    message = str(error[0])
    assert error[0].batch == 1
    reported, reported_rows = committed_from(message)
    in_table = batches_in_table(database_url, table, 10)
    assert reported == set(in_table) == {0}
    assert reported_rows == sum(in_table.values()) == 10
    assert "unknown" not in message
    reliability.record(
        AREA,
        "backend terminated while its batch was inside COMMIT (a deferred trigger stalls it)",
        "the outcome of a COMMIT whose connection died is asked of the server "
        "(txid_status), never guessed",
        f"{killed} backend terminated in COMMIT of batch 1; reported batches "
        f"{sorted(reported)} ({reported_rows} rows) committed, table held "
        f"{sum(in_table.values())}",
    )


async def test_network_frozen_mid_upsert_bounds_the_call(
    proxied: DatabaseOptimizer, proxy: TcpProxy, table: str, database_url: str, reliability: Any
) -> None:
    db = proxied
    total, batch_size = 200_000, 10_000
    error: list[BulkUpsertError] = []
    finished = anyio.Event()

    async def upsert() -> None:
        try:
            await db.bulk_upsert(table, rows(total, "x"), batch_size=batch_size)
        except BulkUpsertError as exc:
            error.append(exc)
        finally:
            finished.set()

    def some_committed() -> bool:
        with admin(database_url) as conn:
            found = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
        return bool(found and found[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(upsert)
        await wait_for(some_committed, timeout=60, what="a committed batch")
        proxy.freeze()
        frozen_at = time.monotonic()
        # One batch's client-side deadline is 2 x (statement_timeout + 2) = 6 s here, plus,
        # if the freeze caught a COMMIT, asking the server how it ended (connect_timeout 2 s
        # + statement_timeout + 2 s).
        with anyio.fail_after(2 * (1 + CLIENT_GRACE) + (2 + 1 + CLIENT_GRACE) + 2):
            await finished.wait()
        gave_up = time.monotonic() - frozen_at
    proxy.thaw()
    assert len(error) == 1
    message = str(error[0])
    assert "no answer" in message
    reported, reported_rows = committed_from(message)
    in_table = batches_in_table(database_url, table, batch_size)
    assert all(n == batch_size for n in in_table.values()), in_table
    # A COMMIT caught by the freeze cannot be asked about through the frozen network: the
    # message then names that batch as unknown, and only it may differ.
    unknown = re.search(r"whether batches ([\d, -]+) were committed is unknown", message)
    maybe = parse_ranges(unknown.group(1)) if unknown else set()
    assert set(in_table) - maybe == reported
    assert sum(n for b, n in in_table.items() if b not in maybe) == reported_rows
    with anyio.fail_after(15):
        while True:
            try:
                again = await db.bulk_upsert(table, rows(total, "x"), batch_size=batch_size)
                break
            except DatabaseUnavailableError:
                await anyio.sleep(0.05)
    held = sum(in_table.values())
    assert (again.inserted, again.updated) == (total - held, held)
    reliability.record(
        AREA,
        "network frozen in the middle of a 200,000-row bulk_upsert (own TCP proxy)",
        "the call gives up within one batch's client deadline, 2 x (statement_timeout + 2 s), "
        "reporting exactly the batches committed; a retry after the thaw completes it",
        f"gave up {gave_up:.1f}s after the freeze (statement_timeout=1); reported and held "
        f"{reported_rows:,} rows in {len(reported)} batches; retry inserted "
        f"{again.inserted:,}, updated {again.updated:,}",
    )
