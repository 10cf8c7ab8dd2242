"""SqliteCache: the embedded persistent cache for one machine (WAL, several processes)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import anyio

from .._core.validate import non_negative_number
from ..errors import CacheUnavailableError, ConfigError
from ._base import BaseCache
from ._expiry import ExpiryJob, check_interval

if TYPE_CHECKING:
    from ..config import Settings
    from ._codec import Codec

__all__ = ["SqliteCache", "sqlite_path_from_url"]

_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_BUSY_CODES: Final = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes' low byte)
_PURGE_BATCH: Final = 5000
_T = TypeVar("_T")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(
            f"url: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, "
            f"got {url!r}",
            key="url",
        )
    path = unquote(parts.path[1:])
    if not path:
        raise ConfigError(f"url: the SQLite URL names no file: {url!r}", key="url")
    return path


def glob_sqlite(prefix: str, pattern: str | None) -> str:
    """SQLite GLOB for ``pattern`` (``*``/``?`` wild, all else literal) under ``prefix``."""

    def esc(text: str) -> str:
        # In GLOB a bracket class of one character matches that character literally.
        return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)

    if pattern is None:
        return esc(prefix) + "*"
    return esc(prefix) + "".join(ch if ch in "*?" else esc(ch) for ch in pattern)


class SqliteCache(BaseCache):
    """Cache in one SQLite file: persistent, zero servers, safe for several processes.

    The file is opened in WAL mode (readers never wait for the writer) with
    ``synchronous=NORMAL``. Each call is one short indexed statement in autocommit, run
    first on the calling thread without waiting for any lock: an indexed lookup costs about
    10 microseconds, less than handing it to a worker thread. When another process holds
    the write lock, the statement moves to a worker thread that waits up to
    ``busy_timeout`` seconds (default 5), so the event loop never waits for a lock.
    The table (``table``, default ``leadperf_cache``) is ``key TEXT PRIMARY KEY, value
    BLOB, expires_at REAL (Unix seconds), updated_at REAL``; see docs/cache.md. A new file
    is created complete (built aside, then linked into place), so an existing file of 0
    bytes is a damaged cache and is refused rather than silently started over.
    Expired rows are removed by a background job every ``cleanup_interval`` seconds
    (default 300, with jitter; None turns it off), run by one process at a time.
    """

    scheme = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "leadperf_cache",
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        busy_timeout: float = 5.0,
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
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigError(f"path: must be a file path, got {path!r}", key="path")
        if not isinstance(table, str) or not table or "\x00" in table:
            raise ConfigError(f"table: must be a non-empty name, got {table!r}", key="table")
        non_negative_number(busy_timeout, "busy_timeout", finite=False)
        self.path = Path(path)
        self.table = table
        self.busy_timeout = float(busy_timeout)
        self.cleanup_interval = check_interval(cleanup_interval)
        self._set_unavailable(sqlite3.OperationalError, sqlite3.DatabaseError)
        self._db: sqlite3.Connection | None = None
        # The worker thread's own connection (waits for locks); one thread uses it at a time.
        self._slow: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._expiry: ExpiryJob | None = None
        t = '"' + table.replace('"', '""') + '"'
        self._t = t
        idx = '"' + (table + "_expires_idx").replace('"', '""') + '"'
        meta = '"' + (table + "_jobs").replace('"', '""') + '"'
        self._sql = {
            "create": f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY NOT NULL, "
            "value BLOB NOT NULL, expires_at REAL, updated_at REAL NOT NULL) WITHOUT ROWID",
            "index": f"CREATE INDEX IF NOT EXISTS {idx} ON {t} (expires_at)",
            "jobs": f"CREATE TABLE IF NOT EXISTS {meta} (name TEXT PRIMARY KEY NOT NULL, "
            "holder TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID",
            "lease": f"INSERT INTO {meta} (name, holder, until) VALUES ('expiry', ?, ?) "
            f"ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            f"WHERE {meta}.until <= ? OR {meta}.holder = excluded.holder",
            "get": f"SELECT value FROM {t} WHERE key = ? AND {_LIVE}",
            "get_ttl": f"SELECT value, expires_at FROM {t} WHERE key = ? AND {_LIVE}",
            "set": f"INSERT INTO {t} (key, value, expires_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            "add": f"INSERT INTO {t} (key, value, expires_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "expires_at = excluded.expires_at, updated_at = excluded.updated_at "
            f"WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?",
            "delete": f"DELETE FROM {t} WHERE key = ? RETURNING {_LIVE}",
            "exists": f"SELECT 1 FROM {t} WHERE key = ? AND {_LIVE}",
            "clear": f"DELETE FROM {t} WHERE key GLOB ? RETURNING {_LIVE}",
            "count": f"SELECT count(*) FROM {t} WHERE key GLOB ? AND {_LIVE}",
            "purge": f"DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE "
            f"expires_at IS NOT NULL AND expires_at <= ? LIMIT {_PURGE_BATCH})",
        }
        self._holder = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"SqliteCache(path={str(self.path)!r}, namespace={self.namespace!r})"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteCache:
        """Build from ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.

        Args:
            url: the sqlite URL.
            **options: the constructor's keyword arguments.

        Returns:
            A new :class:`SqliteCache`.

        Raises:
            ConfigError: not a sqlite URL, or a bad option.
        """
        return cls(sqlite_path_from_url(url), **options)

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        # Creating or checking the file may wait for another process's lock: off the loop.
        self._db = await anyio.to_thread.run_sync(self._open_file, limiter=self._limiter)
        if self.cleanup_interval is not None:
            self._expiry = ExpiryJob(self, self.cleanup_interval, self._expire_once)
            self._expiry.start()

    def _open_file(self) -> sqlite3.Connection:
        if self.path.exists() and self.path.stat().st_size == 0:
            raise CacheUnavailableError(
                f"SQLite cache file {str(self.path)!r} is empty (0 bytes): it was truncated or "
                "is not a leadperf cache, and its entries are gone; delete the file to start a "
                "new cache"
            )
        if not self.path.exists():
            self._create_file()
        db = self._connect(0.0)
        try:
            db.execute(self._sql["create"])
            db.execute(self._sql["index"])
            db.execute(self._sql["jobs"])
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                db.close()
                raise self._unavailable_error(exc) from exc
            # Another process holds the write lock: the tables exist once it is done.
            slow = self._connect(self.busy_timeout)
            try:
                for name in ("create", "index", "jobs"):
                    slow.execute(self._sql[name])
            except sqlite3.Error as exc2:
                db.close()
                raise self._unavailable_error(exc2) from exc2
            finally:
                slow.close()
        return db

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CacheUnavailableError(
                f"cannot open SQLite cache file {str(self.path)!r} ({exc}); check that its "
                "directory exists and is writable"
            ) from exc
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            # Raises for a file that is not a database; WAL mode is set when it was created.
            db.execute("PRAGMA journal_mode").fetchone()
        except sqlite3.Error as exc:
            db.close()
            raise self._unavailable_error(exc) from exc
        return db

    def _create_file(self) -> None:
        """Build a complete cache file aside, then link it into place (never a 0-byte file)."""
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(self._sql["create"])
                db.execute(self._sql["index"])
                db.execute(self._sql["jobs"])
            finally:
                db.close()
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(tmp, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise CacheUnavailableError(
                f"cannot create SQLite cache file {str(self.path)!r} ({exc}); check that its "
                "directory exists and is writable"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def _close(self) -> None:
        if self._expiry is not None:
            await self._expiry.stop()
            self._expiry = None
        # Wait for a statement running in the worker thread before closing its connection.
        async with self._limiter:
            db, self._db = self._db, None
            slow, self._slow = self._slow, None
            if db is not None:
                db.close()
            if slow is not None:
                slow.close()

    def _unavailable_error(self, exc: BaseException) -> CacheUnavailableError:
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return CacheUnavailableError(
                f"{self!r}: another process held the file's write lock for longer than "
                f"busy_timeout ({self.busy_timeout:g} s), so this call was not carried out; "
                "raise busy_timeout or shorten the other process's transactions"
            )
        return CacheUnavailableError(
            f"{self!r} cannot use its file ({type(exc).__name__}: {exc}); check that it is a "
            "SQLite database, not damaged, and writable"
        )

    def _conn(self) -> sqlite3.Connection:
        db = self._db
        assert db is not None
        return db

    # -- running statements: on the loop when no lock is held, else in a worker thread -----

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return fn(self._conn())
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        return await anyio.to_thread.run_sync(self._in_thread, fn, limiter=self._limiter)

    def _in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._db is None:
            raise CacheUnavailableError(f"{self!r} was closed")
        if self._slow is None:
            self._slow = self._connect(self.busy_timeout)
        return fn(self._slow)

    async def _one(self, sql: str, params: Sequence[Any]) -> Any:
        return await self._run(lambda db: db.execute(sql, params).fetchone())

    async def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return await self._run(lambda db: db.execute(sql, params).fetchall())

    async def _count(self, sql: str, params: Sequence[Any]) -> int:
        return await self._run(lambda db: db.execute(sql, params).rowcount)

    # -- primitives -----------------------------------------------------------------------

    async def _get(self, key: str) -> Any:
        try:
            row = self._conn().execute(self._sql["get"], (key, time.time())).fetchone()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            row = await self._one(self._sql["get"], (key, time.time()))
        return None if row is None else row[0]

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        now = time.time()
        row = await self._one(self._sql["get_ttl"], (key, now))
        if row is None:
            return None
        return row[0], (None if row[1] is None else row[1] - now)

    async def _get_many(self, keys: list[str]) -> Sequence[Any]:
        found = await self._run(lambda db: self._select_many(db, keys))
        return [found.get(k) for k in keys]

    async def _get_many_with_ttl(
        self, keys: list[str]
    ) -> Sequence[tuple[Any, float | None] | None]:
        return [await self._get_with_ttl(k) for k in keys]

    def _select_many(self, db: sqlite3.Connection, keys: list[str]) -> dict[str, Any]:
        now = time.time()
        found: dict[str, Any] = {}
        t = self._t
        # SQLite's default limit on bound parameters is 32766; stay well below it.
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT key, value FROM {t} WHERE key IN ({marks}) AND {_LIVE}", (*chunk, now)
            ).fetchall()
            found.update(rows)
        return found

    async def _set(self, key: str, stored: Any, ttl: float) -> None:
        now = time.time()
        await self._count(self._sql["set"], (key, stored, now + ttl, now))

    async def _set_many(self, items: list[tuple[str, Any]], ttl: float) -> None:
        sql = self._sql["set"]

        def write(db: sqlite3.Connection) -> None:
            now = time.time()
            # One transaction: all entries land together, and one commit is much cheaper.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, [(k, v, now + ttl, now) for k, v in items])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._run(write)

    async def _add(self, key: str, stored: Any, ttl: float) -> bool:
        now = time.time()
        return await self._count(self._sql["add"], (key, stored, now + ttl, now, now)) > 0

    async def _delete(self, key: str) -> bool:
        row = await self._one(self._sql["delete"], (key, time.time()))
        return bool(row and row[0])

    async def _exists(self, key: str) -> bool:
        return await self._one(self._sql["exists"], (key, time.time())) is not None

    async def _clear(self, pattern: str | None) -> int:
        rows = await self._all(
            self._sql["clear"], (glob_sqlite(self._prefix, pattern), time.time())
        )
        return sum(1 for (live,) in rows if live)

    def _size(self) -> int | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                self._sql["count"], (glob_sqlite(self._prefix, None), time.time())
            )
            return int(row.fetchone()[0])
        except sqlite3.OperationalError:
            return None

    # -- maintenance ----------------------------------------------------------------------

    @property
    def expiry(self) -> ExpiryJob | None:
        """The background expiry job while open (None when turned off or closed)."""
        return self._expiry

    async def cleanup(self) -> int:
        """Delete expired rows from the file (every namespace).

        Runs in a worker thread, in batches, so neither a large purge nor another process's
        lock holds up the event loop.

        Returns:
            How many rows were deleted.

        Raises:
            CacheUnavailableError: the file is unusable.
        """
        await self._ensure()
        try:
            return await anyio.to_thread.run_sync(self._purge, limiter=self._limiter)
        except self._unavailable as exc:
            self._errors += 1
            raise self._unavailable_error(exc) from exc

    def _purge(self) -> int:
        if self._db is None:
            raise CacheUnavailableError(f"{self!r} was closed")
        if self._slow is None:
            self._slow = self._connect(self.busy_timeout)
        removed = 0
        while True:
            n = self._slow.execute(self._sql["purge"], (time.time(),)).rowcount
            removed += n
            if n < _PURGE_BATCH:
                return removed

    async def _expire_once(self) -> int | None:
        """One run of the expiry job: purge if this process holds the lease, else None."""
        lease = (self.cleanup_interval or 300.0) * 0.9

        def take(db: sqlite3.Connection) -> bool:
            now = time.time()
            return db.execute(self._sql["lease"], (self._holder, now + lease, now)).rowcount > 0

        if not await self._run(take):
            return None
        return await self.cleanup()
