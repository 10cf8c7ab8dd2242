"""Time-partitioned tables and archival of old partitions to cold storage (PostgreSQL).

:class:`Archiver` manages one table partitioned by ``RANGE`` on a timestamp column, one
partition per month or day, named ``<table>_pYYYYMM`` / ``<table>_pYYYYMMDD``, plus a
``<table>_default`` partition that catches rows no partition covers yet. ``archive()``
moves whole partitions older than a cutoff into an archive schema with ``DETACH
PARTITION`` + ``ALTER TABLE ... SET SCHEMA``: one transaction per partition, so a crash
leaves each partition either attached or archived, and a rerun finishes the rest.

Length: over 600 lines only because every public method carries its Args/Returns/
Raises docstring; the code itself is under 550 lines.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs

from .._core.redact import mask_dsn, mask_text, secrets_of
from .._core.validate import non_negative_int
from .._portal import run_sync
from .._util import require
from ..errors import ConfigError, DatabaseError, DatabaseUnavailableError
from ._periods import Interval, next_period, period_start, sql_literal, utc
from ._sql import MAX_IDENTIFIER_BYTES, check_identifier

if TYPE_CHECKING:
    from psycopg import AsyncConnection, sql

    from .database import DatabaseOptimizer

__all__ = ["ArchiveReport", "Archiver", "PartitionInfo"]

_SUFFIX_DIGITS = {"month": 6, "day": 8}
_CONNECT_TIMEOUT = 10


@attrs.frozen
class PartitionInfo:
    """One partition: ``schema.name`` holds rows with ``lower <= timestamp < upper`` (UTC).

    ``rows`` is set where it was counted (in an :class:`ArchiveReport`), else ``None``.
    """

    name: str
    schema: str
    lower: dt.datetime
    upper: dt.datetime
    rows: int | None = None


@attrs.frozen
class ArchiveReport:
    """What one :meth:`Archiver.archive` run moved.

    ``moved`` lists the partitions now in ``archive_schema`` with their row counts,
    oldest first; ``recovered`` names those among them that an interrupted run had
    already detached (and this run finished moving). An empty ``moved`` means there was
    nothing to do: reruns are no-ops.
    """

    cutoff: dt.datetime
    archive_schema: str
    moved: tuple[PartitionInfo, ...]
    recovered: tuple[str, ...]
    seconds: float

    @property
    def rows(self) -> int:
        """Total rows moved."""
        return sum(p.rows or 0 for p in self.moved)

    @property
    def partitions(self) -> tuple[str, ...]:
        """Names of the partitions moved."""
        return tuple(p.name for p in self.moved)


class Archiver:
    """Partition ``schema.table`` by month or day on ``timestamp_column`` and archive old data.

    ``Archiver(dsn_or_optimizer, table, *, timestamp_column="created_at", interval="month",
    archive_schema="archive", schema="public")``: given a DSN it opens one connection per
    call; given a :class:`~leadperf.optimize.DatabaseOptimizer` it borrows from its pool.
    Every method is idempotent and safe to call from a scheduler; ``*_sync`` twins exist
    for an Archiver built from a DSN. Period bounds are computed in UTC.
    """

    def __init__(
        self,
        dsn_or_optimizer: str | DatabaseOptimizer,
        table: str,
        *,
        timestamp_column: str = "created_at",
        interval: Interval = "month",
        archive_schema: str = "archive",
        schema: str = "public",
    ) -> None:
        from .database import DatabaseOptimizer

        if interval not in _SUFFIX_DIGITS:
            raise ConfigError(
                f"interval must be 'month' or 'day', got {interval!r}", key="interval"
            )
        self._table = check_identifier(table, "table")
        longest = f"{table}_p{'0' * _SUFFIX_DIGITS[interval]}"
        if len(longest.encode()) > MAX_IDENTIFIER_BYTES or len(f"{table}_default") > 63:
            raise ConfigError(
                f"table {table!r} is too long for partition names like {longest!r} "
                f"({MAX_IDENTIFIER_BYTES}-byte limit); use a shorter table name",
                key="table",
            )
        self._column = check_identifier(timestamp_column, "timestamp_column")
        self._schema = check_identifier(schema, "schema")
        self._archive_schema = check_identifier(archive_schema, "archive_schema")
        if archive_schema == schema:
            raise ConfigError("archive_schema must differ from schema", key="archive_schema")
        self._interval: Interval = interval
        self._db: DatabaseOptimizer | None = None
        self._dsn: str | None = None
        if isinstance(dsn_or_optimizer, DatabaseOptimizer):
            self._db = dsn_or_optimizer
            self._where = repr(dsn_or_optimizer)
        elif isinstance(dsn_or_optimizer, str) and dsn_or_optimizer.strip():
            self._dsn = dsn_or_optimizer
            self._where = mask_dsn(dsn_or_optimizer)
            require("psycopg", "postgres")
        else:
            raise ConfigError(
                "dsn_or_optimizer must be a PostgreSQL URL or a DatabaseOptimizer",
                key="dsn_or_optimizer",
            )
        self._name_re = re.compile(rf"^{re.escape(table)}_p(\d{{{_SUFFIX_DIGITS[interval]}}})$")

    def __repr__(self) -> str:
        return (
            f"<Archiver {self._schema}.{self._table} by {self._interval} on "
            f"{self._column} -> {self._archive_schema} via {self._where}>"
        )

    # -- names ----------------------------------------------------------------------------

    @property
    def default_partition(self) -> str:
        """Name of the catch-all partition (rows outside every range partition)."""
        return f"{self._table}_default"

    def partition_name(self, moment: dt.datetime | dt.date) -> str:
        """Name of the partition holding ``moment`` (e.g. ``leads_p202611``).

        Args:
            moment: a datetime (naive is read as UTC) or a date.

        Returns:
            The partition's table name.

        Raises:
            ConfigError: ``moment`` is not a date or datetime.
        """
        start = period_start(utc(moment, "moment"), self._interval)
        fmt = "%Y%m" if self._interval == "month" else "%Y%m%d"
        return f"{self._table}_p{start.strftime(fmt)}"

    def _bounds(self, name: str) -> tuple[dt.datetime, dt.datetime] | None:
        match = self._name_re.match(name)
        if match is None:
            return None
        digits = match.group(1)
        day = int(digits[6:8]) if self._interval == "day" else 1
        try:
            lower = dt.datetime(int(digits[:4]), int(digits[4:6]), day, tzinfo=dt.UTC)
        except ValueError:
            return None
        return lower, next_period(lower, self._interval)

    # -- connections ----------------------------------------------------------------------

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection[Any]]:
        # Autocommit, so that each ``conn.transaction()`` below is a real transaction (one
        # per partition step) rather than a savepoint inside one long implicit transaction.
        if self._db is not None:
            async with self._db.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    yield conn
                finally:
                    await conn.set_autocommit(False)
            return
        psycopg = require("psycopg", "postgres")
        assert self._dsn is not None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, connect_timeout=_CONNECT_TIMEOUT, autocommit=True
            )
        except psycopg.Error as exc:
            reason = mask_text(str(exc).strip(), secrets_of(self._dsn))
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self._where}: {reason}. "
                "Check DATABASE_URL and that the server runs"
            ) from None
        async with conn:
            yield conn

    def _fail(self, action: str, exc: BaseException) -> DatabaseError:
        text = f"{type(exc).__name__}: {exc}".strip()
        return DatabaseError(
            f"{action} for {self._schema}.{self._table} failed: "
            f"{mask_text(text, secrets_of(self._dsn))}"
        )

    def _ident(self, name: str, schema: str | None = None) -> sql.Composable:
        from psycopg import sql

        return sql.Identifier(schema or self._schema, name)

    # -- table ----------------------------------------------------------------------------

    async def create_table(
        self, columns: str | Mapping[str, str], *, default_partition: bool = True
    ) -> bool:
        """Create the table, partitioned by RANGE on the timestamp column (idempotent).

        A primary key or unique constraint must include the timestamp column (a PostgreSQL
        rule for partitioned tables). ``ensure_partitions`` and ``archive`` move rows of the
        default partition into their own partition when it is created.

        Args:
            columns: the column list as SQL (``"id bigint, email text NOT NULL, created_at
                timestamptz NOT NULL"``: trusted DDL, not user input) or a mapping of column
                name to SQL type (names are quoted).
            default_partition: add a ``<table>_default`` partition catching rows no range
                partition covers, so inserts never fail.

        Returns:
            True if the table was created, False if it already existed.

        Raises:
            DatabaseError: a table of that name exists but is not partitioned by RANGE on the
                timestamp column, or the server refused the DDL.
            DatabaseUnavailableError: the server cannot be reached.
        """
        from psycopg import sql

        if isinstance(columns, str):
            if not columns.strip():
                raise ConfigError("columns must not be empty", key="columns")
            body: sql.Composable = sql.SQL(columns)
        elif isinstance(columns, Mapping) and columns:
            if self._column not in columns:
                raise ConfigError(
                    f"columns must include the timestamp column {self._column!r}", key="columns"
                )
            body = sql.SQL(", ").join(
                sql.SQL("{} {}").format(
                    sql.Identifier(check_identifier(name, "columns")),
                    sql.SQL(kind),
                )
                for name, kind in columns.items()
            )
        else:
            raise ConfigError("columns must be SQL text or a non-empty mapping", key="columns")
        async with self._connect() as conn:
            try:
                async with conn.transaction():
                    # Workers creating the same table at once would race on the catalog
                    # (IF NOT EXISTS does not stop a concurrent duplicate): one at a time.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        (f"leadperf.archive.create:{self._schema}.{self._table}",),
                    )
                    existed = await self._partition_key(conn) is not None
                    await conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self._schema)
                        )
                    )
                    await conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} ({}) PARTITION BY RANGE ({})"
                        ).format(self._ident(self._table), body, sql.Identifier(self._column))
                    )
                    await self._check_partitioned(conn)
                    if default_partition:
                        await conn.execute(
                            sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(
                                self._ident(self.default_partition), self._ident(self._table)
                            )
                        )
            except self._psycopg_error() as exc:
                raise self._fail("create_table", exc) from exc
        return not existed

    @staticmethod
    def _psycopg_error() -> type[Exception]:
        psycopg = require("psycopg", "postgres")
        error: type[Exception] = psycopg.Error
        return error

    async def _partition_key(self, conn: AsyncConnection[Any]) -> str | None:
        """``pg_get_partkeydef`` of the table ('' if not partitioned), None if absent."""
        cur = await conn.execute(
            "SELECT c.relkind::text, pg_get_partkeydef(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (self._schema, self._table),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return str(row[1] or "") if row[0] == "p" else ""

    async def _check_partitioned(self, conn: AsyncConnection[Any]) -> None:
        from psycopg import sql

        key = await self._partition_key(conn)
        if key is None:
            raise DatabaseError(
                f"table {self._schema}.{self._table} does not exist; call create_table() first"
            )
        quoted = sql.Identifier(self._column).as_string(conn)
        if key not in (f"RANGE ({self._column})", f"RANGE ({quoted})"):
            raise DatabaseError(
                f"table {self._schema}.{self._table} exists but is not partitioned by RANGE "
                f"on {self._column!r} (found {key or 'a plain table'!r}); migrate it or use "
                "another name"
            )

    # -- partitions -----------------------------------------------------------------------

    async def partitions(self) -> tuple[PartitionInfo, ...]:
        """Range partitions currently attached (those following the naming), oldest first.

        Returns:
            One :class:`PartitionInfo` per partition.

        Raises:
            DatabaseUnavailableError: the server cannot be reached.
        """
        async with self._connect() as conn:
            attached, _ = await self._attached(conn)
        return attached

    async def _attached(self, conn: AsyncConnection[Any]) -> tuple[tuple[PartitionInfo, ...], bool]:
        """(our attached range partitions oldest first, whether the default exists)."""
        cur = await conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' "
            "FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace pn ON pn.oid = p.relnamespace "
            "WHERE pn.nspname = %s AND p.relname = %s",
            (self._schema, self._table),
        )
        found: list[PartitionInfo] = []
        has_default = False
        for name, is_default in await cur.fetchall():
            if is_default:
                has_default = True
                continue
            bounds = self._bounds(name)
            if bounds is not None:
                found.append(PartitionInfo(name, self._schema, *bounds))
        found.sort(key=lambda p: p.lower)
        return tuple(found), has_default

    async def ensure_partitions(
        self, ahead: int = 3, *, now: dt.datetime | None = None
    ) -> tuple[str, ...]:
        """Create the partitions for the current period and ``ahead`` more (idempotent).

        Rows already sitting in the default partition for a new period are moved into it.

        Args:
            ahead: periods after the current one (``3`` with ``interval="month"``: this month
                and the next three).
            now: the current time (default: now, UTC); for back-filling and tests.

        Returns:
            The names created by this call (empty when all existed).

        Raises:
            ConfigError: a bad ``ahead`` or ``now``.
            DatabaseError: the table is not partitioned as expected.
            DatabaseUnavailableError: the server cannot be reached.
        """
        non_negative_int(ahead, "ahead")
        start = period_start(utc(now or dt.datetime.now(dt.UTC), "now"), self._interval)
        created: list[str] = []
        async with self._connect() as conn:
            try:
                await self._check_partitioned(conn)
                lower = start
                for _ in range(ahead + 1):
                    if await self._create_partition(conn, lower):
                        created.append(self.partition_name(lower))
                    lower = next_period(lower, self._interval)
            except self._psycopg_error() as exc:
                raise self._fail("ensure_partitions", exc) from exc
        return tuple(created)

    async def _create_partition(
        self, conn: AsyncConnection[Any], lower: dt.datetime, *, only_if_rows: bool = False
    ) -> bool:
        """Create the partition starting at ``lower`` in its own transaction; True if new."""
        from psycopg import sql

        name = self.partition_name(lower)
        upper = next_period(lower, self._interval)
        parent, default = self._ident(self._table), self._ident(self.default_partition)
        column = sql.Identifier(self._column)
        bounds = (sql.Literal(sql_literal(lower)), sql.Literal(sql_literal(upper)))
        async with conn.transaction():
            # Writers wait for this short transaction instead of racing the row move.
            await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(parent))
            if await self._exists(conn, self._schema, name):
                return False
            _, has_default = await self._attached(conn)
            stray = 0
            if has_default:
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE {} >= {} AND {} < {}").format(
                        default, column, bounds[0], column, bounds[1]
                    )
                )
                stray = int((await cur.fetchone() or (0,))[0])
            if only_if_rows and stray == 0:
                return False
            create = sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
            if stray:
                # The default partition may not keep rows a new partition covers: take it
                # out, create the partition, move the rows over, put it back (one txn).
                await conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, default)
                )
                await conn.execute(create.format(self._ident(name), parent, *bounds))
                await conn.execute(
                    sql.SQL(
                        "WITH moved AS (DELETE FROM {} WHERE {} >= {} AND {} < {} RETURNING *) "
                        "INSERT INTO {} SELECT * FROM moved"
                    ).format(default, column, bounds[0], column, bounds[1], self._ident(name))
                )
                await conn.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(parent, default)
                )
            else:
                await conn.execute(create.format(self._ident(name), parent, *bounds))
        return True

    @staticmethod
    async def _exists(conn: AsyncConnection[Any], schema: str, name: str) -> bool:
        cur = await conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        )
        return await cur.fetchone() is not None

    # -- archival -------------------------------------------------------------------------

    async def archive(self, older_than: dt.datetime | dt.date) -> ArchiveReport:
        """Move every partition whose whole range ends at or before ``older_than``.

        Each partition is detached and moved into ``archive_schema`` (``ALTER TABLE ...
        SET SCHEMA``, no data copied) in one transaction, with its row count in the report.
        Old rows sitting in the default partition get their partition first, so they are
        archived too. If the archive already holds a table of that name (rows that
        arrived late for an archived period), the rows are appended to it and the
        partition is dropped. A partition left detached but unmoved by an interrupted run
        is finished. Idempotent: a rerun moves nothing.

        Args:
            older_than: the cut-off (naive datetimes are read as UTC).

        Returns:
            An :class:`ArchiveReport` of what moved.

        Raises:
            ConfigError: a bad ``older_than``.
            DatabaseError: the table is not partitioned as expected, or a move failed (that
                partition's transaction is rolled back).
            DatabaseUnavailableError: the server cannot be reached.
        """
        started = time.perf_counter()
        cutoff = utc(older_than, "older_than")
        moved: list[PartitionInfo] = []
        recovered: list[str] = []
        async with self._connect() as conn:
            try:
                await self._check_partitioned(conn)
                await self._ensure_archive_schema(conn)
                for info in await self._leftovers(conn, cutoff):
                    done = await self._move(conn, info, detach=False)
                    moved.append(done)
                    if done.rows is not None:
                        recovered.append(info.name)
                await self._split_default(conn, cutoff)
                attached, _ = await self._attached(conn)
                for info in attached:
                    if info.upper <= cutoff:
                        moved.append(await self._move(conn, info, detach=True))
            except self._psycopg_error() as exc:
                raise self._fail("archive", exc) from exc
        moved.sort(key=lambda p: p.lower)
        return ArchiveReport(
            cutoff=cutoff,
            archive_schema=self._archive_schema,
            moved=tuple(m for m in moved if m.rows is not None),
            recovered=tuple(recovered),
            seconds=time.perf_counter() - started,
        )

    async def _ensure_archive_schema(self, conn: AsyncConnection[Any]) -> None:
        from psycopg import errors, sql

        try:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self._archive_schema)
                    )
                )
        except (errors.UniqueViolation, errors.DuplicateSchema):
            pass  # IF NOT EXISTS is not race-free: a concurrent run created it first

    async def _leftovers(
        self, conn: AsyncConnection[Any], cutoff: dt.datetime
    ) -> list[PartitionInfo]:
        """Tables named like our partitions, in the live schema, but no longer attached."""
        cur = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND NOT c.relispartition "
            "AND c.relname LIKE %s",
            (
                self._schema,
                self._table.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + r"\_p%",
            ),
        )
        found = []
        for (name,) in await cur.fetchall():
            bounds = self._bounds(name)
            # Only ranges the cutoff covers: a recent detached table may be someone's
            # maintenance in progress, not ours to move.
            if bounds is not None and bounds[1] <= cutoff:
                found.append(PartitionInfo(name, self._schema, *bounds))
        return found

    async def _split_default(self, conn: AsyncConnection[Any], cutoff: dt.datetime) -> None:
        """Give old rows in the default partition their own partitions (to archive them)."""
        from psycopg import sql

        _, has_default = await self._attached(conn)
        if not has_default:
            return
        column = sql.Identifier(self._column)
        while True:
            cur = await conn.execute(
                sql.SQL("SELECT min({}) FROM {} WHERE {} < {}").format(
                    column,
                    self._ident(self.default_partition),
                    column,
                    sql.Literal(sql_literal(period_start(cutoff, self._interval))),
                )
            )
            oldest = (await cur.fetchone() or (None,))[0]
            if oldest is None:
                return
            lower = period_start(utc(oldest, "timestamp"), self._interval)
            if not await self._create_partition(conn, lower, only_if_rows=True):
                return  # already exists (rows raced in): leave them for the next run

    async def _move(
        self, conn: AsyncConnection[Any], info: PartitionInfo, *, detach: bool
    ) -> PartitionInfo:
        """Detach (if attached) and move one partition to the archive schema, atomically."""
        from psycopg import sql

        live = self._ident(info.name)
        cold = self._ident(info.name, self._archive_schema)
        async with conn.transaction():
            # One mover per partition at a time: a concurrent run waits here, then sees
            # the partition gone and skips it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"leadperf.archive:{self._schema}.{info.name}",),
            )
            cur = await conn.execute(
                "SELECT c.relispartition FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (self._schema, info.name),
            )
            state = await cur.fetchone()
            if state is None or bool(state[0]) != detach:
                return attrs.evolve(info, rows=None)  # someone else moved it meanwhile
            if detach:
                await conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                        self._ident(self._table), live
                    )
                )
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live))
            rows = int((await cur.fetchone() or (0,))[0])
            if await self._exists(conn, self._archive_schema, info.name):
                await conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(cold, live))
                await conn.execute(sql.SQL("DROP TABLE {}").format(live))
            else:
                await conn.execute(
                    sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                        live, sql.Identifier(self._archive_schema)
                    )
                )
        return attrs.evolve(info, schema=self._archive_schema, rows=rows)

    # -- sync twins -----------------------------------------------------------------------

    def _sync_ok(self) -> None:
        if self._db is not None:
            raise ConfigError(
                "the *_sync methods need an Archiver built from a DSN: a DatabaseOptimizer's "
                "pool belongs to its own event loop; await the async methods instead",
                key="dsn_or_optimizer",
            )

    def create_table_sync(
        self, columns: str | Mapping[str, str], *, default_partition: bool = True
    ) -> bool:
        """Blocking :meth:`create_table` (works inside a running event loop too)."""
        self._sync_ok()

        async def call() -> bool:
            return await self.create_table(columns, default_partition=default_partition)

        return run_sync(call)

    def ensure_partitions_sync(
        self, ahead: int = 3, *, now: dt.datetime | None = None
    ) -> tuple[str, ...]:
        """Blocking :meth:`ensure_partitions`."""
        self._sync_ok()

        async def call() -> tuple[str, ...]:
            return await self.ensure_partitions(ahead, now=now)

        return run_sync(call)

    def archive_sync(self, older_than: dt.datetime | dt.date) -> ArchiveReport:
        """Blocking :meth:`archive`, for cron jobs and schedulers without an event loop."""
        self._sync_ok()
        return run_sync(self.archive, older_than)
