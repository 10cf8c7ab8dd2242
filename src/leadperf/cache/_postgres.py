"""PostgresCache: one indexed table behind a psycopg-pool AsyncConnectionPool."""

from __future__ import annotations

import asyncio
import math
import os
import select
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._core.redact import mask_dsn, secrets_of
from .._core.validate import non_negative_int
from .._util import require
from ..errors import CacheUnavailableError, ConfigError
from ._base import BaseCache, State
from ._expiry import ExpiryJob, check_interval

if TYPE_CHECKING:
    from ..config import Settings
    from ._codec import Codec

__all__ = ["PostgresCache"]

_SCHEMES = ("postgresql", "postgres")
_DEFAULT_RETENTION = 30 * 24 * 3600.0
_LIVE = "(expires_at IS NULL OR expires_at > now())"
_PURGE_BATCH: Final = 5000
_T = TypeVar("_T")


def _sever(conn: Any, flag: list[bool]) -> None:
    """Shut the connection's socket down so a call stuck on it fails at once.

    Cancelling psycopg mid-query makes it send a cancel request and wait up to 10 s for the
    server; through a frozen network that is 10 s more. A shut-down socket reads as EOF
    instead: the call raises OperationalError now and the pool discards the connection.
    """
    flag.append(True)
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, Exception):  # already closed: the call fails on its own
        pass


def like_pattern(prefix: str, pattern: str | None) -> str:
    """LIKE pattern (ESCAPE '\\') for glob ``pattern`` (``*``/``?`` wild) under ``prefix``."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    if pattern is None:
        return esc(prefix) + "%"
    body = "".join("%" if ch == "*" else "_" if ch == "?" else esc(ch) for ch in pattern)
    return esc(prefix) + body


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name}: must be seconds > 0 (or a timedelta), got {value!r}", key=name)
    return float(value)


class PostgresCache(BaseCache):
    """Cache in one PostgreSQL table through a psycopg-pool ``AsyncConnectionPool``.

    ``dsn`` (``postgresql://`` or ``postgres://``) defaults to ``settings.cache.url`` when
    that is a PostgreSQL URL, else ``settings.database.url``. The table (``table``, in
    ``schema`` when given; names are quoted identifiers, never formatted into SQL) is
    created on open unless ``create_table=False``: ``key text PRIMARY KEY, value bytea,
    expires_at timestamptz, updated_at timestamptz`` with an index on ``expires_at``.
    The pool holds ``min_size``..``max_size`` connections (default from
    ``settings.cache.pool_min_size``/``pool_max_size``: 2..10). ``connect_timeout``
    bounds opening (seconds). ``timeout`` (seconds, default 5) bounds every call, waiting
    for a pooled connection included: the server aborts a statement running past 90% of
    it (``statement_timeout``) and the client gives up on a server that does not answer (a
    frozen network), so a call is a miss or a counted error after ``timeout``. Each pooled
    connection is checked before use (no round trip unless its socket shows the server
    closed it), so a terminated backend is replaced instead of failing a caller.
    Expired rows and rows not written for ``retention`` (30 days) are removed by a
    background job every ``cleanup_interval`` seconds (default 300, with jitter; None
    turns it off), one process at a time through an advisory lock; :meth:`cleanup` runs
    it on demand. Needs ``pip install 'leadperf[postgres]'``.
    """

    scheme = "postgresql"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        table: str = "leadperf_cache",
        schema: str | None = None,
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        min_size: int | None = None,
        max_size: int | None = None,
        connect_timeout: float = 3.0,
        timeout: float = 5.0,
        retention: float | timedelta = _DEFAULT_RETENTION,
        create_table: bool = True,
        max_value_size: int | None = None,
        cleanup_interval: float | None = 300.0,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace,
            default_ttl=default_ttl,
            codec=codec,
            raise_errors=raise_errors,
            max_value_size=max_value_size,
            settings=settings,
        )
        cs = self._settings.cache
        if dsn is None:
            if cs.url and cs.url.partition("://")[0].lower() in _SCHEMES:
                dsn = cs.url
            else:
                dsn = self._settings.database.url
        if not dsn:
            raise ConfigError(
                "dsn: no PostgreSQL URL given; pass one or set DATABASE_URL "
                "(e.g. postgresql://user@127.0.0.1:5432/db)",
                key="dsn",
            )
        if not isinstance(dsn, str) or dsn.partition("://")[0].lower() not in _SCHEMES:
            shown = mask_dsn(dsn) if isinstance(dsn, str) else repr(dsn)
            raise ConfigError(
                f"dsn: must start with postgresql:// or postgres://, got {shown}", key="dsn"
            )
        for name, value in (("table", table), ("schema", schema)):
            if value is None and name == "schema":
                continue
            if not isinstance(value, str) or not value or "\x00" in value or len(value) > 63:
                raise ConfigError(
                    f"{name}: must be a non-empty name of at most 63 characters, got {value!r}",
                    key=name,
                )
        lo = cs.pool_min_size if min_size is None else min_size
        hi = cs.pool_max_size if max_size is None else max_size
        non_negative_int(lo, "min_size")
        if isinstance(hi, bool) or not isinstance(hi, int) or hi < max(lo, 1):
            raise ConfigError(
                f"max_size: must be an integer >= max(min_size, 1), got {hi!r}", key="max_size"
            )
        self.dsn = dsn
        self.table = table
        self.schema = schema
        self.min_size = lo
        self.max_size = hi
        self.connect_timeout = _seconds(connect_timeout, "connect_timeout")
        self.timeout = _seconds(timeout, "timeout")
        self.retention = _seconds(retention, "retention")
        self.create_table = bool(create_table)
        self.cleanup_interval = check_interval(cleanup_interval)
        self._expiry: ExpiryJob | None = None
        self._secrets = secrets_of(dsn)
        psycopg = require("psycopg", "postgres", "psycopg")
        pool_mod = require("psycopg_pool", "postgres", "psycopg-pool")
        self._set_unavailable(
            psycopg.OperationalError, psycopg.InterfaceError, pool_mod.PoolTimeout, OSError
        )
        self._pool: Any = None
        self._q: dict[str, str] = {}

    def __repr__(self) -> str:
        where = f"{self.schema}.{self.table}" if self.schema else self.table
        return (
            f"PostgresCache(dsn={mask_dsn(self.dsn)!r}, table={where!r}, "
            f"namespace={self.namespace!r})"
        )

    # -- SQL ------------------------------------------------------------------------------

    def _queries(self) -> dict[str, Any]:
        from psycopg import sql

        t = sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)
        idx = sql.Identifier(f"{self.table[:48]}_expires_idx")
        upsert_tail = (
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,"
            " expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at"
        )
        expiry = "now() + %s * interval '1 second'"

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(t=t, idx=idx)

        return {
            "create": q(
                "CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, value bytea NOT NULL,"
                " expires_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            "index": q("CREATE INDEX IF NOT EXISTS {idx} ON {t} (expires_at)"),
            "get": q(f"SELECT value FROM {{t}} WHERE key = %s AND {_LIVE}"),
            "get_ttl": q(
                "SELECT value, EXTRACT(EPOCH FROM expires_at - now())::float8 FROM {t}"
                f" WHERE key = %s AND {_LIVE}"
            ),
            "get_many": q(f"SELECT key, value FROM {{t}} WHERE key = ANY(%s) AND {_LIVE}"),
            "get_many_ttl": q(
                "SELECT key, value, EXTRACT(EPOCH FROM expires_at - now())::float8 FROM {t}"
                f" WHERE key = ANY(%s) AND {_LIVE}"
            ),
            "set": q(
                "INSERT INTO {t} AS c (key, value, expires_at, updated_at)"
                f" VALUES (%s, %s, {expiry}, now())" + upsert_tail
            ),
            "set_many": q(
                "INSERT INTO {t} AS c (key, value, expires_at, updated_at)"
                f" SELECT k, v, {expiry}, now() FROM unnest(%s::text[], %s::bytea[]) AS u(k, v)"
                + upsert_tail
            ),
            "put_raw": q(
                "INSERT INTO {t} AS c (key, value, expires_at, updated_at)"
                " SELECT k, v, to_timestamp(e), now()"
                " FROM unnest(%s::text[], %s::bytea[], %s::float8[]) AS u(k, v, e)" + upsert_tail
            ),
            "add": q(
                "INSERT INTO {t} AS c (key, value, expires_at, updated_at)"
                f" VALUES (%s, %s, {expiry}, now())"
                + upsert_tail
                + " WHERE c.expires_at IS NOT NULL AND c.expires_at <= now() RETURNING 1"
            ),
            "delete": q(f"DELETE FROM {{t}} WHERE key = %s RETURNING {_LIVE}"),
            "exists": q(f"SELECT 1 FROM {{t}} WHERE key = %s AND {_LIVE}"),
            "clear": q(
                "WITH d AS (DELETE FROM {t} WHERE key LIKE %s ESCAPE '\\' RETURNING expires_at)"
                f" SELECT count(*) FROM d WHERE {_LIVE}"
            ),
            "cleanup": q(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= now()"
                f" OR updated_at < now() - %s * interval '1 second' LIMIT {_PURGE_BATCH})"
            ),
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        pool_mod = require("psycopg_pool", "postgres", "psycopg-pool")
        pool = pool_mod.AsyncConnectionPool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            timeout=self.timeout,
            # libpq's connect_timeout is whole seconds, 2 at least.
            kwargs={"autocommit": True, "connect_timeout": max(2, math.ceil(self.connect_timeout))},
            configure=self._configure,
            # A refused connection is retried with backoff for this long, then given up:
            # the next caller starts a fresh attempt, so recovery after an outage is quick.
            reconnect_timeout=max(2.0, self.connect_timeout),
            name=f"leadperf-cache-{self.table}",
        )
        try:
            await pool.open(wait=self.min_size > 0, timeout=self.connect_timeout)
            async with pool.connection(timeout=self.connect_timeout) as conn:
                composed = self._queries()
                self._q = {name: c.as_string(conn) for name, c in composed.items()}
                if self.create_table:
                    # The advisory lock makes concurrent first opens (several processes)
                    # create the table once instead of racing on the catalog.
                    async with conn.transaction():
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext(%s))",
                            (f"leadperf-cache:{self.schema}.{self.table}",),
                        )
                        await conn.execute(self._q["create"])
                        await conn.execute(self._q["index"])
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        if self.cleanup_interval is not None:
            self._expiry = ExpiryJob(self, self.cleanup_interval, self._expire_once)
            self._expiry.start()

    async def _configure(self, conn: Any) -> None:
        # The server aborts a statement a little before the call's deadline: a slow
        # statement then fails cleanly and its connection stays usable; the client-side
        # deadline is left for a server that does not answer at all.
        await conn.execute(f"SET statement_timeout = {max(1, int(self.timeout * 900))}")

    async def _close(self) -> None:
        if self._expiry is not None:
            await self._expiry.stop()
            self._expiry = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _use(self, op: Callable[[Any], Awaitable[_T]], timeout: float | None = None) -> _T:
        """Run ``op(conn)`` on a pooled connection, all of it within ``timeout`` seconds."""
        seconds = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        conn = await self._checked_conn(loop, deadline)
        severed: list[bool] = []
        timer = loop.call_at(deadline, _sever, conn, severed)
        try:
            return await op(conn)
        except self._unavailable as exc:
            if severed:
                raise TimeoutError(
                    f"the server did not answer within {seconds:g} s (timeout)"
                ) from exc
            raise
        finally:
            timer.cancel()
            await self._pool.putconn(conn)

    async def _checked_conn(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Any:
        """A pooled connection that is still alive; dead ones go back to be replaced.

        This is the pool's ``check`` done here: psycopg-pool sleeps with backoff (1 s,
        2 s ...) after each failed check, and after a server restart every idle connection
        fails one, so callers would wait seconds for what takes milliseconds.
        """
        for _ in range(self.max_size + 1):
            conn = await self._pool.getconn(timeout=max(0.001, deadline - loop.time()))
            if await _alive(conn):
                return conn
            await self._pool.putconn(conn)  # broken: discarded, and the pool opens another
        return await self._pool.getconn(timeout=max(0.001, deadline - loop.time()))

    async def _fetchone(self, query: str, params: Sequence[Any]) -> Any:
        async def op(conn: Any) -> Any:
            cur = await conn.execute(self._q[query], params, binary=True)
            return await cur.fetchone()

        return await self._use(op)

    async def _fetchall(self, query: str, params: Sequence[Any]) -> list[Any]:
        async def op(conn: Any) -> list[Any]:
            cur = await conn.execute(self._q[query], params, binary=True)
            rows: list[Any] = await cur.fetchall()
            return rows

        return await self._use(op)

    async def _run(self, query: str, params: Sequence[Any]) -> int:
        async def op(conn: Any) -> int:
            cur = await conn.execute(self._q[query], params)
            return int(cur.rowcount)

        return await self._use(op)

    # -- primitives -----------------------------------------------------------------------

    async def _get(self, key: str) -> Any:
        row = await self._fetchone("get", (key,))
        return None if row is None else row[0]

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        row = await self._fetchone("get_ttl", (key,))
        return None if row is None else (row[0], row[1])

    async def _get_many(self, keys: list[str]) -> Sequence[Any]:
        rows = await self._fetchall("get_many", (keys,))
        found = dict(rows)
        return [found.get(k) for k in keys]

    async def _get_many_with_ttl(
        self, keys: list[str]
    ) -> Sequence[tuple[Any, float | None] | None]:
        rows = await self._fetchall("get_many_ttl", (keys,))
        found = {k: (v, left) for k, v, left in rows}
        return [found.get(k) for k in keys]

    async def _set(self, key: str, stored: Any, ttl: float) -> None:
        await self._run("set", (key, stored, ttl))

    async def _set_many(self, items: list[tuple[str, Any]], ttl: float) -> None:
        await self._run("set_many", (ttl, [k for k, _ in items], [v for _, v in items]))

    async def _add(self, key: str, stored: Any, ttl: float) -> bool:
        return await self._fetchone("add", (key, stored, ttl)) is not None

    async def _delete(self, key: str) -> bool:
        row = await self._fetchone("delete", (key,))
        return bool(row and row[0])

    async def _exists(self, key: str) -> bool:
        return await self._fetchone("exists", (key,)) is not None

    async def _clear(self, pattern: str | None) -> int:
        row = await self._fetchone("clear", (like_pattern(self._prefix, pattern),))
        return int(row[0])

    async def put_raw(self, rows: Sequence[tuple[str, bytes, float | None]]) -> int:
        """Upsert already-encoded rows, bypassing the codec (for :func:`migrate_sqlite`).

        Args:
            rows: ``(stored key with namespace, encoded value, expires at epoch or None)``.

        Returns:
            The number of rows written.

        Raises:
            CacheUnavailableError: PostgreSQL cannot be reached.
            ClosedError: the cache was closed.
        """
        keys = [r[0] for r in rows]
        values = [r[1] for r in rows]
        expiries = [r[2] for r in rows]
        if self._state is not State.OPEN:
            await self._ensure()
        try:
            return await self._run("put_raw", (keys, values, expiries))
        except CacheUnavailableError:
            raise
        except self._unavailable as exc:
            raise self._unavailable_error(exc) from exc

    # -- maintenance ----------------------------------------------------------------------

    @property
    def expiry(self) -> ExpiryJob | None:
        """The background expiry job while open (None when turned off or closed)."""
        return self._expiry

    async def cleanup(self, retention: float | timedelta | None = None) -> int:
        """Delete expired rows and rows not written for ``retention``.

        Covers the whole table (every namespace), in batches; one runner per table across
        processes (an advisory lock).

        Args:
            retention: seconds or a timedelta (default: the cache's ``retention``, 30 days).

        Returns:
            The number of rows deleted, or 0 when another process is cleaning this table now.

        Raises:
            ConfigError: a bad ``retention``.
            CacheUnavailableError: the server cannot be reached.
        """
        removed = await self._purge(retention)
        return 0 if removed is None else removed

    async def _expire_once(self) -> int | None:
        return await self._purge(None)

    async def _purge(self, retention: float | timedelta | None) -> int | None:
        seconds = self.retention if retention is None else _seconds(retention, "retention")
        if self._state is not State.OPEN:
            await self._ensure()
        lock = f"leadperf-cache-expiry:{self.schema}.{self.table}"

        async def op(conn: Any) -> int | None:
            # One runner per table across processes: a session advisory lock, released at
            # the end (or by the server if this connection dies).
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock,))
            row = await cur.fetchone()
            if not row[0]:
                return None
            try:
                removed = 0
                while True:
                    cur = await conn.execute(self._q["cleanup"], (seconds,))
                    batch = int(cur.rowcount)
                    removed += batch
                    if batch < _PURGE_BATCH:
                        return removed
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))

        try:
            # Each batch is bounded by statement_timeout; the whole purge gets more room.
            return await self._use(op, timeout=self.timeout * 12)
        except self._unavailable as exc:
            self._errors += 1
            raise self._unavailable_error(exc) from exc


async def _alive(conn: Any) -> bool:
    """False for a connection the server closed; a round trip only when it looks closed.

    An idle connection has nothing to read; a readable socket means the server sent
    something (a termination notice, EOF), so only then is a round trip spent to decide.
    """
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
        if readable:
            await conn.execute("")
    except Exception:
        return False
    return True
