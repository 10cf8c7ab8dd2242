"""Bulk database work on PostgreSQL: pooled connections, COPY-based upserts, a query cache.

:class:`DatabaseOptimizer` wraps one psycopg-pool ``AsyncConnectionPool``. ``bulk_upsert``
loads rows with ``COPY`` into a temporary table and merges each batch with one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``; ``fetch_cached`` keeps query results in any
``leadperf.cache`` backend; ``fetch_many`` reads rows by key with ``= ANY(%s)``.

psycopg and psycopg_pool are imported when the optimizer is built, never at module import.
"""

from __future__ import annotations

import enum
import functools
import math
import operator
import struct
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._util import require
from ..errors import (
    BulkUpsertError,
    CacheError,
    ClosedError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
)
from ._sql import (
    binary_copy_ok,
    check_identifier,
    dsn_password,
    fast_array_dumpers,
    jsonb_columns,
    mask_dsn,
    qualified,
    query_cache_key,
    scrub,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.abc import Query
    from psycopg_pool import AsyncConnectionPool

    from ..cache import Cache
    from ..config import Settings

__all__ = ["DatabaseOptimizer", "DatabaseStats", "UpsertResult"]

DEFAULT_BATCH_SIZE = 25_000
DEFAULT_CONCURRENCY = 2
# Opening fails fast when the server is down: a probe connection waits at most this long
# (or pool_timeout, if shorter) instead of letting the pool retry in the background.
OPEN_TIMEOUT = 10.0
_TEMP_TABLE = "_leadperf_upsert"
_MISSING = object()


@attrs.frozen
class UpsertResult:
    """What one :meth:`DatabaseOptimizer.bulk_upsert` call wrote.

    ``rows`` rows were given: ``inserted + updated + unchanged + duplicates == rows``.
    ``duplicates`` were replaced by a later row with the same key; ``unchanged`` rows
    matched the stored row exactly and were not rewritten (only with
    ``skip_unchanged=True``). ``seconds`` is wall time for the whole call.
    """

    inserted: int
    updated: int
    batches: int
    rows: int
    seconds: float
    duplicates: int = 0
    unchanged: int = 0

    @property
    def rows_per_second(self) -> float:
        """Input rows per second of wall time (0.0 for an empty call)."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@attrs.frozen
class DatabaseStats:
    """Snapshot of a :class:`DatabaseOptimizer`: pool, upserts and query cache.

    Pool fields come from psycopg-pool's ``get_stats()``: ``pool_size`` connections exist
    (between ``pool_min`` and ``pool_max``), ``available`` are idle, ``in_use`` are lent
    out, ``waiting`` requests wait for one now; ``requests`` and ``wait_ms`` are totals
    since open. All counters are zero before the pool opens.
    """

    closed: bool
    pool_min: int
    pool_max: int
    pool_size: int
    available: int
    in_use: int
    waiting: int
    requests: int
    wait_ms: int
    connection_errors: int
    connections_lost: int
    queries: int
    upserts: int
    upsert_rows: int
    upsert_inserted: int
    upsert_updated: int
    upsert_unchanged: int
    upsert_batches: int
    upsert_errors: int
    query_cache_enabled: bool
    query_cache_hits: int
    query_cache_misses: int
    query_cache_errors: int
    query_cache_hit_rate: float


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _int_arg(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}", key=name)
    return value


@attrs.frozen
class _Statements:
    create: Any
    copy_text: Any
    copy_binary: Any
    merge: Any
    drop: Any
    probe: Any


@attrs.define
class _UpsertPlan:
    table: str
    statements: _Statements
    records: list[tuple[Any, ...]]
    jsonb: list[int]
    batch_size: int
    binary: list[int] | None = None


class _BatchFailed(Exception):
    def __init__(self, index: int, start: int, end: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.start, self.end, self.reason = index, start, end, reason


def _ranges(indexes: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for i in indexes:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _wrap_jsonb(rec: tuple[Any, ...], indexes: list[int]) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb

    values = list(rec)
    for i in indexes:
        if values[i] is not None:
            values[i] = Jsonb(values[i])
    return tuple(values)


@functools.cache
def _fast_dumpers() -> list[type]:
    return fast_array_dumpers()


class DatabaseOptimizer:
    """Pooled PostgreSQL access for bulk work: COPY upserts, batch reads, a query cache.

    ``DatabaseOptimizer(dsn=None, *, pool_size=None, max_overflow=None, pool_timeout=None,
    cache=None, enable_query_cache=None, settings=None)``: every ``None`` is taken from
    ``settings.database`` (env ``DATABASE_URL``, ``DB_POOL_SIZE``, ``DB_MAX_OVERFLOW``,
    ``DB_POOL_TIMEOUT``). The pool keeps ``pool_size`` connections and grows to
    ``pool_size + max_overflow``; ``pool_timeout`` (seconds) bounds a wait for one.

    Use it as ``async with DatabaseOptimizer(url) as db:``; it also opens on first use and
    is closed with :meth:`close`. Raises :class:`ConfigError` for bad arguments or no DSN,
    :class:`DatabaseUnavailableError` when the server cannot be reached at open.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        pool_timeout: float | None = None,
        cache: Cache | None = None,
        enable_query_cache: bool | None = None,
        settings: Settings | None = None,
    ) -> None:
        from ..config import Settings

        settings = settings or Settings.from_env()
        db = settings.database
        dsn = dsn if dsn is not None else db.url
        if dsn is None or (isinstance(dsn, str) and not dsn.strip()):
            raise ConfigError(
                "no database URL: pass dsn=... or set DATABASE_URL "
                "(e.g. postgresql://user@host:5432/dbname)",
                key="dsn",
            )
        if not isinstance(dsn, str):
            raise ConfigError(f"dsn must be a string, got {type(dsn).__name__}", key="dsn")
        self._psycopg = require("psycopg", "postgres")
        self._pool_mod = require("psycopg_pool", "postgres", "psycopg-pool")
        try:
            self._psycopg.conninfo.conninfo_to_dict(dsn)
        except self._psycopg.ProgrammingError:
            raise ConfigError(
                f"dsn {mask_dsn(dsn)!r} is not a valid PostgreSQL connection string; "
                "use postgresql://user@host:port/dbname",
                key="dsn",
            ) from None
        self._dsn = dsn
        self._masked = mask_dsn(dsn)
        self._password = dsn_password(dsn)
        self._pool_size = _int_arg("pool_size", db.pool_size if pool_size is None else pool_size, 1)
        self._max_overflow = _int_arg(
            "max_overflow", db.max_overflow if max_overflow is None else max_overflow, 0
        )
        timeout = db.pool_timeout if pool_timeout is None else pool_timeout
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not timeout > 0
            or math.isinf(timeout)
        ):
            raise ConfigError(
                f"pool_timeout must be a finite number of seconds > 0, got {timeout!r}",
                key="pool_timeout",
            )
        self._pool_timeout = float(timeout)
        self._pool_max = self._pool_size + self._max_overflow
        enabled = db.enable_query_cache if enable_query_cache is None else enable_query_cache
        if not isinstance(enabled, bool):
            raise ConfigError(
                f"enable_query_cache must be True or False, got {enabled!r}",
                key="enable_query_cache",
            )
        self._cache_enabled = enabled
        self._cache: Cache | None = cache
        self._owns_cache = False
        self._cache_max_size = settings.cache.max_size
        self._settings = settings
        self._default_ttl = settings.cache.default_ttl
        self._state = _State.NEW
        self._pool: AsyncConnectionPool[Any] | None = None
        self._open_lock = anyio.Lock()
        self._counters = dict.fromkeys(
            (
                "queries",
                "upserts",
                "upsert_rows",
                "upsert_inserted",
                "upsert_updated",
                "upsert_unchanged",
                "upsert_batches",
                "upsert_errors",
                "cache_hits",
                "cache_misses",
                "cache_errors",
            ),
            0,
        )

    def __repr__(self) -> str:
        return (
            f"<DatabaseOptimizer {self._masked!r} state={self._state.value} "
            f"pool={self._pool_size}+{self._max_overflow}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run; a closed optimizer is never reopened."""
        return self._state is _State.CLOSED

    async def open(self) -> None:
        """Open the pool (idempotent); fails fast with DatabaseUnavailableError if unreachable."""
        if self._state is _State.OPEN:
            return
        async with self._open_lock:
            if self.closed:
                raise ClosedError(f"{self!r} is closed; create a new DatabaseOptimizer")
            if self._pool is not None:
                return
            wait = min(self._pool_timeout, OPEN_TIMEOUT)
            await self._probe(wait)
            pool: AsyncConnectionPool[Any] = self._pool_mod.AsyncConnectionPool(
                self._dsn,
                min_size=self._pool_size,
                max_size=self._pool_size + self._max_overflow,
                timeout=self._pool_timeout,
                open=False,
                name="leadperf",
            )
            try:
                await pool.open(wait=True, timeout=wait)
            except self._pool_mod.PoolTimeout:
                await pool.close()
                raise DatabaseUnavailableError(
                    f"the connection pool for {self._masked} could not fill "
                    f"{self._pool_size} connections within {wait:g}s; check the server's "
                    "max_connections or lower DB_POOL_SIZE"
                ) from None
            self._pool = pool
            self._state = _State.OPEN

    async def _probe(self, wait: float) -> None:
        # One direct connection first: its error says *why* (refused, auth, no such
        # database), where the pool would only time out after retrying in the background.
        psycopg = self._psycopg
        try:
            with anyio.fail_after(wait + 1):
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, connect_timeout=max(1, math.ceil(wait))
                )
            await conn.close()
        except (psycopg.Error, TimeoutError, OSError) as exc:
            reason = scrub(str(exc).strip() or type(exc).__name__, [self._password])
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self._masked}: {reason}. "
                "Check DATABASE_URL and that the server runs and accepts connections"
            ) from None

    async def close(self) -> None:
        """Close the pool and an owned query cache (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        if self._owns_cache and self._cache is not None:
            await self._cache.close()

    async def __aenter__(self) -> DatabaseOptimizer:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ready(self) -> AsyncConnectionPool[Any]:
        if self._state is not _State.OPEN:
            if self._state is _State.CLOSED:
                raise ClosedError(f"{self!r} is closed; create a new DatabaseOptimizer")
            await self.open()
        assert self._pool is not None
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """Borrow a pooled connection; committed on clean exit, rolled back on error.

        Raises :class:`DatabaseUnavailableError` when none frees up within pool_timeout.
        """
        pool = await self._ready()
        try:
            cm = pool.connection()
            conn = await cm.__aenter__()
        except self._pool_mod.PoolTimeout:
            raise DatabaseUnavailableError(
                f"no pooled connection to {self._masked} became free within "
                f"{self._pool_timeout:g}s; raise DB_POOL_SIZE/DB_MAX_OVERFLOW or "
                "DB_POOL_TIMEOUT"
            ) from None
        try:
            yield conn
        except BaseException as exc:
            if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await cm.__aexit__(None, None, None)

    # -- plain queries --------------------------------------------------------------------

    async def execute(self, query: Query, params: Any = None) -> int:
        """Run one statement in its own transaction; return the affected row count."""
        async with self.connection() as conn:
            cur = await self._run(conn, query, params)
            return int(cur.rowcount)

    async def fetch(self, query: Query, params: Any = None) -> list[dict[str, Any]]:
        """Run a query and return every row as a ``{column: value}`` dict."""
        async with self.connection() as conn:
            cur = await self._run(conn, query, params, dict_rows=True)
            return await cur.fetchall() if cur.description else []

    async def _run(
        self, conn: AsyncConnection[Any], query: Query, params: Any, *, dict_rows: bool = False
    ) -> Any:
        from psycopg.rows import dict_row

        self._counters["queries"] += 1
        cur = conn.cursor(row_factory=dict_row) if dict_rows else conn.cursor()
        try:
            await cur.execute(query, params)  # type: ignore[arg-type]
        except self._psycopg.Error as exc:
            raise DatabaseError(self._describe(exc)) from exc
        return cur

    def _describe(self, exc: BaseException) -> str:
        sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None)
        text = str(exc).strip() or type(exc).__name__
        prefix = f"{type(exc).__name__} [{sqlstate}]" if sqlstate else type(exc).__name__
        return scrub(f"{prefix}: {text}", [self._password])

    # -- batch reads ----------------------------------------------------------------------

    async def fetch_many(
        self,
        table: str,
        key_column: str,
        keys: Iterable[Any],
        columns: Sequence[str] | None = None,
        *,
        schema: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` whose ``key_column`` is in ``keys``, in one ``= ANY(%s)`` query.

        ``columns`` defaults to every column. Missing keys are simply absent from the result;
        row order is the server's. Identifiers are quoted, so any table name is safe.
        """
        from psycopg import sql

        check_identifier(table, "table")
        check_identifier(key_column, "key_column")
        if schema is not None:
            check_identifier(schema, "schema")
        wanted = list(keys)
        if not wanted:
            return []
        if columns is None:
            selected: sql.Composable = sql.SQL("*")
        else:
            if isinstance(columns, str):
                columns = (columns,)
            selected = sql.SQL(", ").join(
                sql.Identifier(check_identifier(c, "columns")) for c in columns
            )
        query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
            selected, qualified(schema, table), sql.Identifier(key_column)
        )
        return await self.fetch(query, (wanted,))

    # -- query cache ----------------------------------------------------------------------

    def _query_cache(self) -> Cache | None:
        if not self._cache_enabled:
            return None
        if self._cache is None:
            from ..cache import MemoryCache

            # raise_errors: a value the codec refuses is counted in stats() here.
            self._cache = MemoryCache(
                max_size=self._cache_max_size, raise_errors=True, settings=self._settings
            )
            self._owns_cache = True
        return self._cache

    async def fetch_cached(
        self, query: str, params: Any = None, ttl: float | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`fetch` through the query cache: a hit skips the database.

        The key is a sha256 of the server, the query text and the parameters (with their
        types), so a changed parameter misses. ``ttl`` (seconds) defaults to the cache
        settings' ``default_ttl``. When the cache is disabled (``enable_query_cache=False``)
        or fails, the query runs uncached and the failure is counted in ``stats()``.
        Values must suit the cache's codec (rows of JSON-able values for the default one).
        """
        if not isinstance(query, str):
            raise ConfigError("fetch_cached takes the query as a str", key="query")
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ConfigError(f"ttl must be a number of seconds > 0, got {ttl!r}", key="ttl")
        cache = self._query_cache()
        if cache is None:
            return await self.fetch(query, params)
        key = query_cache_key(self._masked, query, params)
        try:
            value = await cache.get(key, _MISSING)
        except CacheError:
            self._counters["cache_errors"] += 1
            value = _MISSING
        if value is not _MISSING:
            self._counters["cache_hits"] += 1
            # Fresh dicts: an in-memory backend hands out the stored objects themselves.
            return [dict(row) for row in value]
        self._counters["cache_misses"] += 1
        rows = await self.fetch(query, params)
        try:
            stored = [dict(row) for row in rows]
            await cache.set(key, stored, ttl=self._default_ttl if ttl is None else ttl)
        except CacheError:
            self._counters["cache_errors"] += 1
        return rows

    # -- bulk upsert ----------------------------------------------------------------------

    async def bulk_upsert(
        self,
        table: str,
        rows: Iterable[Mapping[str, Any]],
        key: str | Sequence[str] = ("email",),
        batch_size: int = DEFAULT_BATCH_SIZE,
        schema: str | None = None,
        *,
        atomic: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        skip_unchanged: bool = False,
    ) -> UpsertResult:
        """Insert or update ``rows`` (mappings of column to value) keyed by ``key``.

        Each batch of ``batch_size`` rows is COPYed into a temporary table and merged with
        one ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE`` in its own transaction; the
        key needs a unique index or constraint. Columns not in the rows keep their value on
        update (their default on insert). A key repeated in ``rows`` keeps its last row.
        dict values (and lists of dicts) are sent as jsonb.

        Up to ``concurrency`` batches run at once on separate pooled connections (keys are
        deduplicated first, so no two batches touch the same row). Every row must have the
        same columns, including every key column; otherwise :class:`ConfigError` is raised
        before anything is written. A failing batch rolls back whole and raises
        :class:`BulkUpsertError` (``.batch`` is its index; the message lists the batches
        that were committed and stay written). ``atomic=True`` runs every batch in one
        transaction on one connection instead, so that a failure writes nothing.
        Rerunning the same call is always safe: upserts are idempotent.
        ``skip_unchanged=True`` leaves rows identical to the stored ones untouched (no new
        row version, no WAL), which makes re-scrapes that change little much cheaper; they
        are counted in ``unchanged``. It compares with ``IS DISTINCT FROM``, so every
        updated column needs an equality operator (``jsonb`` has one, ``json`` does not).
        """
        started = time.perf_counter()
        check_identifier(table, "table")
        if schema is not None:
            check_identifier(schema, "schema")
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise ConfigError("key must name at least one column", key="key")
        for k in keys:
            check_identifier(k, "key")
        if len(set(keys)) != len(keys):
            raise ConfigError(f"key {keys!r} repeats a column", key="key")
        batch_size = _int_arg("batch_size", batch_size, 1)
        concurrency = _int_arg("concurrency", concurrency, 1)
        data = rows if isinstance(rows, Sequence) else list(rows)
        if not data:
            return UpsertResult(0, 0, 0, 0, time.perf_counter() - started)
        columns = self._check_columns(data, keys)
        records = self._records(data, columns)
        key_of = operator.itemgetter(*(columns.index(k) for k in keys))
        try:
            # Keep the last row per key: ON CONFLICT cannot touch one row twice in one
            # statement, and distinct keys let batches run side by side without waiting.
            unique = {key_of(rec): rec for rec in records}
        except TypeError as exc:
            raise ConfigError(f"key values must be hashable: {exc}", key="key") from None
        if len(unique) != len(records):
            records = list(unique.values())
        del unique
        await self._ready()
        plan = _UpsertPlan(
            table=table,
            statements=self._upsert_sql(table, schema, columns, keys, skip_unchanged),
            records=records,
            jsonb=[columns.index(c) for c in jsonb_columns(columns, data)],
            batch_size=batch_size,
        )
        starts = list(range(0, len(records), batch_size))
        workers = 1 if atomic else min(concurrency, len(starts), self._pool_max)
        done: dict[int, tuple[int, int, int]] = {}
        failed: list[_BatchFailed] = []
        errors: list[BaseException] = []
        pending = iter(enumerate(starts))

        async def work(conn: AsyncConnection[Any]) -> None:
            # One shared iterator: each worker takes the next batch when it is free.
            for index, start in pending:
                if failed:
                    return
                try:
                    done[index] = await self._upsert_batch(conn, plan, index, start)
                except _BatchFailed as exc:
                    failed.append(exc)
                    return

        async def extra_worker() -> None:
            try:
                async with self.connection() as conn:
                    await work(conn)
            except Exception as exc:
                errors.append(exc)

        self._counters["upserts"] += 1
        async with self.connection() as conn:
            plan.binary = await self._binary_ok(conn, plan)
            if atomic:
                async with conn.transaction():
                    await work(conn)
                    if failed:
                        raise self._upsert_error(plan, failed, done, starts, atomic=True)
            else:
                async with anyio.create_task_group() as tg:
                    for _ in range(workers - 1):
                        tg.start_soon(extra_worker)
                    await work(conn)
        inserted = sum(ins for ins, _, _ in done.values())
        updated = sum(upd for _, upd, _ in done.values())
        unchanged = sum(same for _, _, same in done.values())
        written = sum(min(batch_size, len(records) - starts[i]) for i in done)
        self._count_batch(inserted, updated, unchanged, written, batches=len(done))
        if failed:
            raise self._upsert_error(plan, failed, done, starts, atomic=False)
        if errors:
            raise errors[0]
        return UpsertResult(
            inserted=inserted,
            updated=updated,
            batches=len(done),
            rows=len(data),
            seconds=time.perf_counter() - started,
            duplicates=len(data) - len(records),
            unchanged=unchanged,
        )

    def _upsert_error(
        self,
        plan: _UpsertPlan,
        failed: list[_BatchFailed],
        done: dict[int, tuple[int, int, int]],
        starts: list[int],
        *,
        atomic: bool,
    ) -> BulkUpsertError:
        self._counters["upsert_errors"] += 1
        first = min(failed, key=lambda f: f.index)
        if atomic:
            kept = "the call ran in one transaction (atomic=True), so nothing was written"
        elif done:
            rows = sum(min(plan.batch_size, len(plan.records) - starts[i]) for i in done)
            kept = (
                f"batches {_ranges(sorted(done))} ({rows} rows) were committed and stay "
                "written; rerunning the call is safe (upserts are idempotent)"
            )
        else:
            kept = "no batch was committed"
        error = BulkUpsertError(
            f"bulk upsert into {plan.table!r} failed in batch {first.index} "
            f"(rows {first.start}-{first.end - 1} after removing duplicate keys), which was "
            f"rolled back whole: {first.reason}; {kept}",
            table=plan.table,
            batch=first.index,
        )
        error.__cause__ = first.__cause__
        return error

    def _count_batch(
        self, inserted: int, updated: int, unchanged: int, rows: int, *, batches: int
    ) -> None:
        c = self._counters
        c["upsert_inserted"] += inserted
        c["upsert_updated"] += updated
        c["upsert_unchanged"] += unchanged
        c["upsert_rows"] += rows
        c["upsert_batches"] += batches

    @staticmethod
    def _check_columns(data: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> list[str]:
        first = data[0]
        if not isinstance(first, Mapping):
            raise ConfigError(
                f"rows must be mappings of column to value; row 0 is {type(first).__name__}",
                key="rows",
            )
        columns = list(first.keys())
        for c in columns:
            check_identifier(c, "column")
        wanted = first.keys()
        for index, row in enumerate(data):
            try:
                same = row.keys() == wanted
            except AttributeError:
                raise ConfigError(
                    f"rows must be mappings of column to value; row {index} is "
                    f"{type(row).__name__}",
                    key="rows",
                ) from None
            if not same:
                have = set(row.keys())
                missing = sorted(set(columns) - have)
                extra = sorted(have - set(columns))
                raise ConfigError(
                    f"every row must have the same columns as row 0; row {index} is missing "
                    f"{missing} and has extra {extra}. Nothing was written",
                    key="rows",
                )
        absent = [k for k in keys if k not in wanted]
        if absent:
            raise ConfigError(
                f"key columns {absent} are not in the rows (columns: {columns})", key="key"
            )
        return columns

    @staticmethod
    def _records(data: Sequence[Mapping[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
        getter = operator.itemgetter(*columns)
        if len(columns) == 1:
            return [(getter(row),) for row in data]
        return [getter(row) for row in data]

    @staticmethod
    def _upsert_sql(
        table: str,
        schema: str | None,
        columns: list[str],
        keys: tuple[str, ...],
        skip_unchanged: bool,
    ) -> _Statements:
        from psycopg import sql

        target = qualified(schema, table)
        temp = sql.Identifier(_TEMP_TABLE)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        update = [c for c in columns if c not in keys] or [keys[0]]
        merge = sql.SQL(
            "WITH merged AS ("
            "INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {temp} "
            "ON CONFLICT ({keys}) DO UPDATE SET {sets}{where} "
            "RETURNING (t.xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged"
        ).format(
            target=target,
            cols=cols,
            temp=temp,
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
            sets=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in update
            ),
            where=sql.SQL(" WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
                sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in update),
                sql.SQL(", ").join(
                    sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in update
                ),
            )
            if skip_unchanged
            else sql.SQL(""),
        )
        return _Statements(
            # Only the rows' columns, with the target's types and no constraints: absent
            # NOT NULL columns must not fail the load, the merge applies the real rules.
            create=sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
            ).format(temp, cols, target),
            copy_text=sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols),
            copy_binary=sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(temp, cols),
            merge=merge,
            drop=sql.SQL("DROP TABLE {}").format(temp),
            probe=sql.SQL("SELECT {} FROM {} LIMIT 0").format(cols, target),
        )

    async def _binary_ok(self, conn: AsyncConnection[Any], plan: _UpsertPlan) -> list[int] | None:
        """The target's column type oids when binary COPY is safe for these rows, else None."""
        try:
            cur = await conn.execute(plan.statements.probe)
        except self._psycopg.Error as exc:
            await conn.rollback()
            raise BulkUpsertError(
                f"bulk upsert into {plan.table!r} cannot read the table's columns, so nothing "
                f"was written: {self._describe(exc)}",
                table=plan.table,
                batch=0,
            ) from exc
        assert cur.description is not None
        oids = [d.type_code for d in cur.description]
        sample = plan.records[: min(len(plan.records), 1000)]
        if binary_copy_ok(oids, range(len(oids)), sample):
            return oids
        return None

    async def _upsert_batch(
        self, conn: AsyncConnection[Any], plan: _UpsertPlan, index: int, start: int
    ) -> tuple[int, int, int]:
        batch = plan.records[start : start + plan.batch_size]
        try:
            if plan.binary is not None:
                try:
                    # Nested inside an atomic call this is a savepoint, so a retry is clean.
                    async with conn.transaction():
                        return await self._load_and_merge(conn, plan, batch, binary=True)
                except (TypeError, ValueError, AttributeError, OverflowError, struct.error):
                    # A value binary COPY cannot dump as the column's type: text COPY lets
                    # the server parse it instead, for this batch and the next ones.
                    plan.binary = None
            async with conn.transaction():
                return await self._load_and_merge(conn, plan, batch, binary=False)
        except (self._psycopg.Error, TypeError, ValueError) as exc:
            raise _BatchFailed(index, start, start + len(batch), self._describe(exc)) from exc

    async def _load_and_merge(
        self,
        conn: AsyncConnection[Any],
        plan: _UpsertPlan,
        batch: list[tuple[Any, ...]],
        *,
        binary: bool,
    ) -> tuple[int, int, int]:
        st = plan.statements
        async with conn.cursor() as cur:
            await cur.execute(st.create)
            if binary:
                for dumper in _fast_dumpers():
                    # Registered on this cursor's own adapters map: the pooled connection's
                    # adapters stay untouched.
                    cur.adapters.register_dumper(None, dumper)
                async with cur.copy(st.copy_binary) as copy:
                    copy.set_types(plan.binary or [])
                    for rec in batch:
                        await copy.write_row(rec)
            else:
                wrap = plan.jsonb
                async with cur.copy(st.copy_text) as copy:
                    for rec in batch:
                        await copy.write_row(_wrap_jsonb(rec, wrap) if wrap else rec)
            await cur.execute(st.merge)
            row = await cur.fetchone()
            await cur.execute(st.drop)
        assert row is not None
        inserted, total = int(row[0]), int(row[1])
        return inserted, total - inserted, len(batch) - total

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> DatabaseStats:
        """A frozen snapshot of pool, upsert and query-cache counters."""
        pool_stats: Mapping[str, int] = self._pool.get_stats() if self._pool is not None else {}
        c = self._counters
        lookups = c["cache_hits"] + c["cache_misses"]
        size = pool_stats.get("pool_size", 0)
        available = pool_stats.get("pool_available", 0)
        return DatabaseStats(
            closed=self.closed,
            pool_min=pool_stats.get("pool_min", self._pool_size),
            pool_max=pool_stats.get("pool_max", self._pool_size + self._max_overflow),
            pool_size=size,
            available=available,
            in_use=max(0, size - available),
            waiting=pool_stats.get("requests_waiting", 0),
            requests=pool_stats.get("requests_num", 0),
            wait_ms=pool_stats.get("requests_wait_ms", 0),
            connection_errors=pool_stats.get("connections_errors", 0),
            connections_lost=pool_stats.get("connections_lost", 0),
            queries=c["queries"],
            upserts=c["upserts"],
            upsert_rows=c["upsert_rows"],
            upsert_inserted=c["upsert_inserted"],
            upsert_updated=c["upsert_updated"],
            upsert_unchanged=c["upsert_unchanged"],
            upsert_batches=c["upsert_batches"],
            upsert_errors=c["upsert_errors"],
            query_cache_enabled=self._cache_enabled,
            query_cache_hits=c["cache_hits"],
            query_cache_misses=c["cache_misses"],
            query_cache_errors=c["cache_errors"],
            query_cache_hit_rate=c["cache_hits"] / lookups if lookups else 0.0,
        )
