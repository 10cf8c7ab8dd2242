"""The PostgreSQL connection pool behind :class:`DatabaseOptimizer`: open, check, bound.

Every connection carries a server-side ``statement_timeout`` (sent in the startup packet,
so it costs no round trip), and every call the optimizer makes runs under a client-side
deadline as well: through a frozen network the server's timeout cannot reach the client,
so only the client can give up. A connection is checked (one empty query, bounded) before
a caller gets it; a dead one is discarded and, since one dead backend usually means others
died with it (a restart, ``pg_terminate_backend``), the idle ones are replaced at once
instead of failing the next callers' checks one by one.

psycopg and psycopg_pool are imported by the caller and passed in; this module imports
neither at module level.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._core.redact import mask_text
from ..errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PoolOptions", "borrow", "bounded", "describe", "open_pool", "with_timeout"]

# Opening fails fast when the server is down: a probe connection waits at most this long
# (or pool_timeout, if shorter) instead of letting the pool retry in the background.
OPEN_TIMEOUT = 10.0
# A check is one empty query on an idle connection: a live one answers in well under a
# millisecond on a LAN, so two seconds only ever expire on a dead or frozen link.
CHECK_TIMEOUT = 2.0
# Slack on top of statement_timeout before the client gives up on an answer: the server
# needs a moment to notice its own timeout and to send the error back.
CLIENT_GRACE = 2.0


@attrs.frozen
class PoolOptions:
    """Everything the pool needs, checked once by :class:`DatabaseOptimizer`."""

    dsn: str
    masked: str
    secrets: tuple[str, ...]
    min_size: int
    max_size: int
    timeout: float
    statement_timeout: float | None

    @property
    def deadline(self) -> float:
        """Client-side bound on one statement's answer (seconds)."""
        if self.statement_timeout is None:
            return math.inf
        return self.statement_timeout + CLIENT_GRACE

    @property
    def borrow_deadline(self) -> float:
        """Client-side bound on getting a checked connection (seconds).

        The pool's own wait, plus a failed check or two.
        """
        return self.timeout + 2 * CHECK_TIMEOUT + CLIENT_GRACE

    @property
    def connect_timeout(self) -> int:
        """libpq's ``connect_timeout`` (whole seconds, at least 1)."""
        return max(1, math.ceil(min(self.timeout, OPEN_TIMEOUT)))


def with_timeout(psycopg: ModuleType, dsn: str, statement_timeout: float | None) -> str:
    """``dsn`` with ``-c statement_timeout=...`` added to its libpq ``options``.

    The user's own ``options`` are kept; a ``statement_timeout`` already in them wins,
    since libpq applies ``-c`` settings in order and ours comes first.
    """
    if statement_timeout is None:
        return dsn
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    ours = f"-c statement_timeout={max(1, round(statement_timeout * 1000))}"
    given = str(params.get("options") or "")
    merged = f"{ours} {given}".strip()
    result: str = psycopg.conninfo.make_conninfo(dsn, options=merged)
    return result


def describe(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """``TypeName [SQLSTATE]: message`` with every credential masked."""
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None)
    text = str(exc).strip() or type(exc).__name__
    prefix = f"{type(exc).__name__} [{sqlstate}]" if sqlstate else type(exc).__name__
    return mask_text(f"{prefix}: {text}", secrets)


async def probe(psycopg: ModuleType, opts: PoolOptions) -> None:
    """One direct connection: its error says *why* (refused, auth, no such database).

    The pool would only time out after retrying in the background.
    """
    wait = min(opts.timeout, OPEN_TIMEOUT)
    try:
        with anyio.fail_after(wait + 1):
            conn = await psycopg.AsyncConnection.connect(
                opts.dsn, connect_timeout=opts.connect_timeout
            )
        await conn.close()
    except (psycopg.Error, TimeoutError, OSError) as exc:
        reason = mask_text(str(exc).strip() or type(exc).__name__, opts.secrets)
        raise DatabaseUnavailableError(
            f"cannot connect to PostgreSQL at {opts.masked}: {reason}. "
            "Check DATABASE_URL and that the server runs and accepts connections"
        ) from None


class _Checker:
    """The pool's ``check=``: one bounded empty query; a failure drains the idle ones."""

    def __init__(self, pool_mod: ModuleType) -> None:
        self.pool_mod = pool_mod
        self.pool: AsyncConnectionPool[Any] | None = None

    async def __call__(self, conn: AsyncConnection[Any]) -> None:
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                await self.pool_mod.AsyncConnectionPool.check_connection(conn)
        except Exception:
            # Closed before the pool sees it: a frozen socket is never written to again,
            # and the pool counts it lost and connects a replacement.
            await conn.close()
            await self._drain()
            raise
        except BaseException:
            await conn.close()  # cancelled mid-check: the connection's state is unknown
            raise

    async def _drain(self) -> None:
        # One dead backend usually means more (a restart, pg_terminate_backend of a role):
        # replace every idle connection now rather than let each fail a check in turn,
        # which psycopg-pool answers with a growing pause (0, 1, 2, 4 s...). drain() only
        # closes sockets and schedules reconnects, so it never waits on the network; it is
        # shielded because a cancellation midway would lose connections it had taken out.
        if self.pool is not None:
            with anyio.CancelScope(shield=True):
                await self.pool.drain()


async def open_pool(
    psycopg: ModuleType, pool_mod: ModuleType, opts: PoolOptions
) -> AsyncConnectionPool[Any]:
    """Probe the server, then open a filled, checked pool (DatabaseUnavailableError if not)."""
    await probe(psycopg, opts)
    wait = min(opts.timeout, OPEN_TIMEOUT)
    checker = _Checker(pool_mod)
    pool: AsyncConnectionPool[Any] = pool_mod.AsyncConnectionPool(
        opts.dsn,
        min_size=opts.min_size,
        max_size=opts.max_size,
        timeout=opts.timeout,
        open=False,
        name="leadperf",
        check=checker,
        kwargs={"connect_timeout": opts.connect_timeout},
        # psycopg-pool retries a failed connect with a doubling delay until this many
        # seconds pass; a short bound keeps the delay short, so a server back after an
        # outage is used within about a second instead of after the next long backoff.
        reconnect_timeout=max(2.0, min(opts.timeout, OPEN_TIMEOUT)),
    )
    checker.pool = pool
    try:
        await pool.open(wait=True, timeout=wait)
    except pool_mod.PoolTimeout:
        await pool.close()
        raise DatabaseUnavailableError(
            f"the connection pool for {opts.masked} could not fill {opts.min_size} "
            f"connections within {wait:g}s; check the server's max_connections or lower "
            "DB_POOL_SIZE"
        ) from None
    return pool


@asynccontextmanager
async def borrow(
    pool: AsyncConnectionPool[Any], pool_mod: ModuleType, opts: PoolOptions
) -> AsyncIterator[AsyncConnection[Any]]:
    """A checked pooled connection; committed on clean exit, rolled back on error."""
    try:
        cm = pool.connection()
        with anyio.fail_after(opts.borrow_deadline):
            conn = await cm.__aenter__()
    except (pool_mod.PoolTimeout, TimeoutError):
        raise DatabaseUnavailableError(
            f"no pooled connection to {opts.masked} became free within {opts.timeout:g}s; "
            "raise DB_POOL_SIZE/DB_MAX_OVERFLOW or DB_POOL_TIMEOUT, or check that the "
            "server accepts connections"
        ) from None
    try:
        yield conn
    except BaseException as exc:
        if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await cm.__aexit__(None, None, None)


@asynccontextmanager
async def bounded(conn: AsyncConnection[Any], seconds: float, what: str) -> AsyncIterator[None]:
    """Run the block under a client-side deadline of ``seconds``.

    On expiry the connection is closed (its socket may be frozen mid-message, so nothing
    more is sent on it; the pool replaces it) and :class:`DatabaseUnavailableError` says
    which call gave up.
    """
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        await conn.close()
        raise DatabaseUnavailableError(
            f"{what} got no answer within {seconds:g}s (statement_timeout plus "
            f"{CLIENT_GRACE:g}s); the server or the network stopped answering, and the "
            "connection was dropped. Retry when the server answers again"
        ) from None
