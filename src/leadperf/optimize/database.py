"""Bulk database work on PostgreSQL: pooled connections, COPY-based upserts, a query cache.

:class:`DatabaseOptimizer` wraps one psycopg-pool ``AsyncConnectionPool`` (see
``_pg_pool``: checked connections, ``statement_timeout`` and a client-side deadline on
every call). ``bulk_upsert`` plans the call once against the table's catalog
(``_upsert_plan``) and runs its batches (``_upsert_exec``): COPY straight into the table
when a batch's keys are all new, otherwise COPY into a temporary table and one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. ``fetch_cached`` keeps query results in
any ``leadperf.cache`` backend; ``fetch_many`` reads rows by key with ``= ANY(%s)``.

psycopg and psycopg_pool are imported when the optimizer is built, never at module import.

Length: over 600 lines only because every public method carries its Args/Returns/
Raises docstring; the code itself is under 500 lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Self

import attrs

from .._core.lifecycle import AsyncResource, State
from .._core.redact import mask_dsn, secrets_of
from .._core.validate import positive_int
from .._util import require
from ..errors import (
    BulkUpsertError,
    CacheError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
)
from ._pg_pool import PoolOptions, borrow, bounded, describe, open_pool, with_timeout
from ._sql import check_identifier, qualified, query_cache_key
from ._upsert_exec import Executor, Outcome, upsert_error
from ._upsert_plan import TableInfo, make_plan, read_table

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.abc import Query
    from psycopg_pool import AsyncConnectionPool

    from ..cache import Cache
    from ..config import DatabaseSettings, Settings

__all__ = ["DatabaseOptimizer", "DatabaseStats", "UpsertResult"]

DEFAULT_BATCH_SIZE = 25_000
DEFAULT_CONCURRENCY = 2
DEFAULT_STATEMENT_TIMEOUT = 60.0
_MISSING = object()
_COUNTERS = (
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
)


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
    since open; ``connections_lost`` counts connections found dead and replaced. All
    counters are zero before the pool opens.
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


def _keys(key: str | Sequence[str]) -> tuple[str, ...]:
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys:
        raise ConfigError("key must name at least one column", key="key")
    for k in keys:
        check_identifier(k, "key")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"key {keys!r} repeats a column", key="key")
    return keys


def _statement_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ConfigError(
            f"statement_timeout must be a finite number of seconds > 0 or None, got {value!r}",
            key="statement_timeout",
        )
    return float(value)


class DatabaseOptimizer(AsyncResource):
    """Pooled PostgreSQL access for bulk work: COPY upserts, batch reads, a query cache.

    ``DatabaseOptimizer(dsn=None, *, pool_size=None, max_overflow=None, pool_timeout=None,
    cache=None, enable_query_cache=None, settings=None, statement_timeout=60.0)``: every
    ``None`` is taken from ``settings.database`` (env ``DATABASE_URL``, ``DB_POOL_SIZE``,
    ``DB_MAX_OVERFLOW``, ``DB_POOL_TIMEOUT``). The pool keeps ``pool_size`` connections and
    grows to ``pool_size + max_overflow``; ``pool_timeout`` (seconds) bounds a wait for one.
    ``statement_timeout`` (seconds, ``None`` for none) is set on every connection, and each
    call also gives up on the client side 2 s after it (see docs/database.md).

    Use it as ``async with DatabaseOptimizer(url) as db:``; it also opens on first use and
    is closed with :meth:`close`. Raises :class:`ConfigError` for bad arguments or no DSN,
    :class:`DatabaseUnavailableError` when the server cannot be reached at open.
    """

    _closed_hint: ClassVar[str] = "create a new DatabaseOptimizer"
    # An owned query cache may exist before the pool opens; closing releases it too.
    _close_when_new: ClassVar[bool] = True

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
        statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        from ..config import Settings

        settings = settings or Settings.from_env()
        given = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
            "enable_query_cache": enable_query_cache,
        }
        explicit: dict[str, Any] = {
            name: value for name, value in given.items() if value is not None
        }
        # Settings' own validators check explicit values too (attrs.evolve runs them), so
        # nothing is validated twice here.
        db = attrs.evolve(settings.database, **explicit) if explicit else settings.database
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
        self._masked = mask_dsn(dsn)
        self._opts = self._pool_options(dsn, db, _statement_timeout(statement_timeout))
        self._cache_enabled = db.enable_query_cache
        self._cache: Cache | None = cache
        self._owns_cache = False
        self._settings = settings
        self._pool: AsyncConnectionPool[Any] | None = None
        self._counters = dict.fromkeys(_COUNTERS, 0)

    def _pool_options(
        self, dsn: str, db: DatabaseSettings, statement_timeout: float | None
    ) -> PoolOptions:
        try:
            full_dsn = with_timeout(self._psycopg, dsn, statement_timeout)
        except self._psycopg.ProgrammingError:
            raise ConfigError(
                f"dsn {self._masked!r} is not a valid PostgreSQL connection string; "
                "use postgresql://user@host:port/dbname",
                key="dsn",
            ) from None
        return PoolOptions(
            dsn=full_dsn,
            masked=self._masked,
            secrets=tuple(secrets_of(dsn)),
            min_size=db.pool_size,
            max_size=db.pool_size + db.max_overflow,
            timeout=float(db.pool_timeout),
            statement_timeout=statement_timeout,
        )

    def __repr__(self) -> str:
        extra = self._opts.max_size - self._opts.min_size
        return (
            f"<DatabaseOptimizer {self._masked!r} state={self._state.value} "
            f"pool={self._opts.min_size}+{extra}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def _aopen(self) -> None:
        self._pool = await open_pool(self._psycopg, self._pool_mod, self._opts)

    async def _aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        if self._owns_cache and self._cache is not None:
            await self._cache.close()

    async def open(self) -> Self:
        """Open the pool (idempotent).

        Returns:
            The optimizer itself.

        Raises:
            DatabaseUnavailableError: the server cannot be reached (fails fast).
            ClosedError: the optimizer was closed.
        """
        return await super().open()

    async def close(self) -> None:
        """Close the pool and an owned query cache; idempotent (same as :meth:`aclose`)."""
        await self.aclose()

    async def apply_settings(self, settings: Settings) -> list[str]:
        """Take ``settings.database``'s pool bounds live: the open pool is resized
        (``pool_size`` connections kept, up to ``pool_size + max_overflow``) and new
        borrows wait up to ``pool_timeout``; a pool not yet open opens with them.

        Args:
            settings: the new settings (only ``settings.database`` is read).

        Returns:
            The ``DatabaseSettings`` field names that changed and were taken live (a
            subset of ``pool_size``, ``max_overflow``, ``pool_timeout``). The URL and
            ``enable_query_cache`` take effect only in a new optimizer.

        Raises:
            ClosedError: the optimizer was closed.
        """
        self._check_open()
        db = settings.database
        old = self._opts
        new = attrs.evolve(
            old,
            min_size=db.pool_size,
            max_size=db.pool_size + db.max_overflow,
            timeout=float(db.pool_timeout),
        )
        live = [
            name
            for name, before, after in (
                ("pool_size", old.min_size, new.min_size),
                ("max_overflow", old.max_size - old.min_size, new.max_size - new.min_size),
                ("pool_timeout", old.timeout, new.timeout),
            )
            if before != after
        ]
        pool = self._pool
        if pool is not None:
            if (old.min_size, old.max_size) != (new.min_size, new.max_size):
                await pool.resize(new.min_size, new.max_size)
            pool.timeout = new.timeout
        self._opts = new
        return live

    async def _ready(self) -> AsyncConnectionPool[Any]:
        if self._state is not State.OPEN:
            await self.open()
        assert self._pool is not None
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """Borrow a checked pooled connection; committed on clean exit, rolled back on error.

        Yields:
            A psycopg ``AsyncConnection``.

        Raises:
            DatabaseUnavailableError: none freed up within ``pool_timeout``.
            ClosedError: the optimizer was closed.
        """
        pool = await self._ready()
        async with borrow(pool, self._pool_mod, self._opts) as conn:
            yield conn

    # -- plain queries --------------------------------------------------------------------

    async def execute(self, query: Query, params: Any = None) -> int:
        """Run one statement in its own transaction.

        Args:
            query: SQL text or a ``psycopg.sql`` composition; values go in ``params``.
            params: the query's parameters (a sequence or a mapping), never formatted in.

        Returns:
            The affected row count.

        Raises:
            DatabaseError: the server refused the statement (message masked).
            DatabaseUnavailableError: no connection, or no answer within the deadline.
        """
        async with self.connection() as conn:
            async with bounded(conn, self._opts.deadline, "execute"):
                cur = await self._run(conn, query, params)
                await conn.commit()
            return int(cur.rowcount)

    async def fetch(self, query: Query, params: Any = None) -> list[dict[str, Any]]:
        """Run a query and return every row as a ``{column: value}`` dict.

        Args:
            query: SQL text or a ``psycopg.sql`` composition.
            params: the query's parameters (a sequence or a mapping).

        Returns:
            The rows, in the server's order.

        Raises:
            DatabaseError: the server refused the query (message masked).
            DatabaseUnavailableError: no connection, or no answer within the deadline.
        """
        async with self.connection() as conn:
            async with bounded(conn, self._opts.deadline, "fetch"):
                cur = await self._run(conn, query, params, dict_rows=True)
                rows: list[dict[str, Any]] = await cur.fetchall() if cur.description else []
                await conn.commit()
            return rows

    async def _run(
        self, conn: AsyncConnection[Any], query: Query, params: Any, *, dict_rows: bool = False
    ) -> Any:
        from psycopg.rows import dict_row

        self._counters["queries"] += 1
        cur = conn.cursor(row_factory=dict_row) if dict_rows else conn.cursor()
        try:
            await cur.execute(query, params)  # type: ignore[arg-type]
        except self._psycopg.Error as exc:
            if conn.closed:
                raise DatabaseUnavailableError(
                    f"the connection to {self._masked} was lost during the query: "
                    f"{describe(exc, self._opts.secrets)}; retry it"
                ) from exc
            raise DatabaseError(describe(exc, self._opts.secrets)) from exc
        return cur

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

        Missing keys are simply absent from the result; row order is the server's.
        Identifiers are quoted, so any table name is safe.

        Args:
            table: the table name.
            key_column: the column the keys are matched against.
            keys: the wanted key values.
            columns: the columns to return (default: every column).
            schema: the table's schema (default: the search path).

        Returns:
            The matching rows as ``{column: value}`` dicts.

        Raises:
            ConfigError: an empty or over-long identifier.
            DatabaseError: the server refused the query (an unknown table or column).
            DatabaseUnavailableError: no connection, or no answer within the deadline.
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
                max_size=self._settings.cache.max_size, raise_errors=True, settings=self._settings
            )
            self._owns_cache = True
        return self._cache

    async def fetch_cached(
        self, query: str, params: Any = None, ttl: float | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`fetch` through the query cache: a hit skips the database.

        The key is a sha256 of the server, the query text and the parameters (with their
        types), so a changed parameter misses. When the cache is disabled
        (``enable_query_cache=False``) or fails, the query runs uncached and the failure
        is counted in ``stats()``. Values must suit the cache's codec (rows of JSON-able
        values for the default one).

        Args:
            query: SQL text.
            params: the query's parameters.
            ttl: seconds to keep the result (default: the cache settings' ``default_ttl``).

        Returns:
            The rows, from the cache or from the server.

        Raises:
            ConfigError: a query that is not a str, a bad ``ttl``, unhashable parameters.
            DatabaseError: the server refused the query.
            DatabaseUnavailableError: no connection, or no answer within the deadline.
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
            await cache.set(
                key, stored, ttl=self._settings.cache.default_ttl if ttl is None else ttl
            )
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

        The rows are checked against the table first: a value a column cannot take exactly
        (an int out of range, ``True`` for a number, bytes for text, a str that is not JSON
        for json/jsonb, ``None`` in a NOT NULL key) raises before anything is written. The
        key needs a unique index on exactly its columns. Each batch of ``batch_size`` rows
        is one transaction: COPYed straight into the table when its keys are new, else
        COPYed into a temporary table and merged with ``INSERT ... ON CONFLICT DO UPDATE``.
        A repeated key keeps its last row; rows with a NULL key are each inserted. Up to
        ``concurrency`` batches run at once; ``atomic=True`` runs them all in one
        transaction. ``skip_unchanged=True`` leaves identical rows untouched (``IS
        DISTINCT FROM``: every updated column needs an equality operator). Rerunning a call
        is always safe. docs/database.md has the details.

        Args:
            table: the table name.
            rows: mappings of column to value, every row with the same columns.
            key: the key column(s); a unique index on exactly them must exist.
            batch_size: rows per transaction (> 0).
            schema: the table's schema (default: the search path).
            atomic: run every batch in one transaction.
            concurrency: batches run at once (> 0), bounded by the pool's size.
            skip_unchanged: leave rows identical to the stored ones untouched.

        Raises:
            ConfigError: bad arguments or rows of different shapes (nothing written).
            RowValueError: a value the table cannot take; ``.row`` and ``.column`` say
                which (a ConfigError; nothing written).
            BulkUpsertError: the table or a column does not exist, the key has no unique
                index, or a batch failed: ``.batch`` is its index, and the message lists
                exactly the batches that were committed and stay written.
            DatabaseUnavailableError: no connection could be had, or no answer in time.

        Returns:
            An :class:`UpsertResult` with the counts of the committed batches.
        """
        started = time.perf_counter()
        check_identifier(table, "table")
        if schema is not None:
            check_identifier(schema, "schema")
        keys = _keys(key)
        batch_size = positive_int(batch_size, "batch_size")
        concurrency = positive_int(concurrency, "concurrency")
        data = rows if isinstance(rows, Sequence) else list(rows)
        if not data:
            return UpsertResult(0, 0, 0, 0, time.perf_counter() - started)
        info = await self._read_table(schema, table)
        plan = make_plan(
            info, schema, data, keys, batch_size=batch_size, skip_unchanged=skip_unchanged
        )
        workers = min(concurrency, len(plan.batches), self._opts.max_size)
        executor = Executor(plan, self._psycopg, self.connection, self._opts)
        self._counters["upserts"] += 1
        outcome = await executor.run(atomic=atomic, workers=workers)
        self._count(outcome)
        if outcome.failed:
            self._counters["upsert_errors"] += 1
            raise upsert_error(plan, outcome, atomic=atomic)
        return UpsertResult(
            inserted=outcome.total("inserted"),
            updated=outcome.total("updated"),
            batches=len(outcome.done),
            rows=len(data),
            seconds=time.perf_counter() - started,
            duplicates=plan.duplicates,
            unchanged=outcome.total("unchanged"),
        )

    async def _read_table(self, schema: str | None, table: str) -> TableInfo:
        what = f"bulk upsert into {table!r}"
        async with self.connection() as conn, bounded(conn, self._opts.deadline, what):
            try:
                return await read_table(conn, schema, table)
            except self._psycopg.Error as exc:
                raise BulkUpsertError(
                    f"bulk upsert into {table!r} cannot read the table's columns, so "
                    f"nothing was written: {describe(exc, self._opts.secrets)}",
                    table=table,
                    batch=0,
                ) from exc

    def _count(self, outcome: Outcome) -> None:
        c = self._counters
        c["upsert_inserted"] += outcome.total("inserted")
        c["upsert_updated"] += outcome.total("updated")
        c["upsert_unchanged"] += outcome.total("unchanged")
        c["upsert_rows"] += outcome.total("rows")
        c["upsert_batches"] += len(outcome.done)

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
            pool_min=pool_stats.get("pool_min", self._opts.min_size),
            pool_max=pool_stats.get("pool_max", self._opts.max_size),
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
