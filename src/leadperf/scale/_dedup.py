"""DedupSet: the URLs every worker has seen, in Redis or PostgreSQL, one round trip a batch.

URLs are normalised first (:func:`~leadperf.scale.normalize_url`) and stored as 16-byte
BLAKE2b digests, so keys stay short and a URL's credentials are never written anywhere.
A URL that cannot be normalised is keyed by its exact text: dedup never drops a URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._util import mask_url, require
from ..errors import ClosedError, ConfigError, LeadperfError
from ._normalize import normalize_url

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["DedupSet", "DedupStats", "PostgresDedupSet", "RedisDedupSet"]

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")


@attrs.frozen
class DedupStats:
    """Counters of a :class:`DedupSet`: URLs offered, new ones, duplicates, round trips."""

    offered: int
    added: int
    duplicates: int
    round_trips: int


class DedupSet:
    """A set of URLs shared by every worker (the scraper's ``dedup=`` seam).

    ``add_many(urls)`` answers, in one round trip, True for each URL nobody added before
    (the caller fetches it) and False for the rest (a repeat in the same call included).
    Build one with :meth:`from_url`. Use ``async with`` or call :meth:`close`.
    """

    def __init__(self, *, name: str = "urls", ttl: float | None = None, sort_query: bool = False):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"name: must match [a-z_][a-z0-9_]{{0,40}}, got {name!r}", key="name")
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not ttl > 0
            or math.isinf(ttl)
        ):
            raise ConfigError(f"ttl: must be seconds > 0 or None, got {ttl!r}", key="ttl")
        self.name = name
        self.ttl = None if ttl is None else float(ttl)
        self.sort_query = bool(sort_query)
        self._closed = False
        self._counts = {"offered": 0, "added": 0, "round_trips": 0}

    @staticmethod
    def from_url(url: str, **options: Any) -> DedupSet:
        """A dedup set on ``redis://``/``rediss://``/``unix://`` or ``postgresql://`` storage.

        Args:
            url: where the set lives.
            **options: ``name`` (set name, default "urls"), ``ttl`` (seconds a URL counts
                as seen; None: forever), ``sort_query`` (normalise the query order), and
                for Redis ``namespace`` (key prefix), for PostgreSQL ``table``.

        Returns:
            A :class:`RedisDedupSet` or :class:`PostgresDedupSet`.

        Raises:
            ConfigError: an unknown scheme or a bad option.
        """
        scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
        if scheme in ("redis", "rediss", "unix"):
            return RedisDedupSet(url, **options)
        if scheme in ("postgresql", "postgres"):
            return PostgresDedupSet(url, **options)
        raise ConfigError(
            f"dedup url {mask_url(url) if isinstance(url, str) else url!r}: expected "
            "redis://, rediss://, unix:// or postgresql://",
            key="url",
        )

    def key_of(self, url: str) -> bytes:
        """The 16-byte digest a URL is stored under (after normalisation)."""
        try:
            text = normalize_url(url, sort_query=self.sort_query)
        except LeadperfError:
            text = url if isinstance(url, str) else repr(url)
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    async def add_many(self, urls: Sequence[str]) -> list[bool]:
        """Add ``urls``; True for each that was not in the set before (one round trip).

        Raises:
            ClosedError: the set was closed.
            CacheUnavailableError: the store cannot be reached.
        """
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed; create a new one")
        keys = [self.key_of(url) for url in urls]
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        self._counts["round_trips"] += 1
        new = await self._add(unique)
        answer: list[bool] = []
        for key in keys:
            if key in new:
                new.discard(key)
                answer.append(True)
            else:
                answer.append(False)
        self._counts["offered"] += len(keys)
        self._counts["added"] += answer.count(True)
        return answer

    async def add(self, url: str) -> bool:
        """Add one URL; True when it was new."""
        return (await self.add_many([url]))[0]

    async def contains_many(self, urls: Sequence[str]) -> list[bool]:
        """True for each URL in the set (one round trip); adds nothing."""
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed; create a new one")
        keys = [self.key_of(url) for url in urls]
        if not keys:
            return []
        self._counts["round_trips"] += 1
        present = await self._contains(list(dict.fromkeys(keys)))
        return [key in present for key in keys]

    async def remove_many(self, urls: Sequence[str]) -> int:
        """Forget ``urls`` (so they may be fetched again, e.g. after a failure); count removed."""
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed; create a new one")
        keys = list(dict.fromkeys(self.key_of(url) for url in urls))
        if not keys:
            return 0
        self._counts["round_trips"] += 1
        return await self._remove(keys)

    def stats(self) -> DedupStats:
        """A snapshot of the counters."""
        c = self._counts
        return DedupStats(c["offered"], c["added"], c["offered"] - c["added"], c["round_trips"])

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    async def close(self) -> None:
        """Release the connections; idempotent."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def aclose(self) -> None:
        """:meth:`close`, under the name every leadperf part is closed by."""
        await self.close()

    async def ping(self) -> float:
        """Reach the store now (for status screens); adds nothing to the set.

        Returns:
            The round trip in milliseconds.

        Raises:
            ClosedError: the set was closed.
            CacheUnavailableError: the store cannot be reached.
        """
        if self._closed:
            raise ClosedError(f"this {type(self).__name__} is closed; create a new one")
        started = time.perf_counter()
        await self._ping()
        return (time.perf_counter() - started) * 1000

    async def __aenter__(self) -> DedupSet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- backend primitives -----------------------------------------------------------------

    async def _add(self, keys: list[bytes]) -> set[bytes]:
        """Insert unique ``keys``; return those that were not present."""
        raise NotImplementedError

    async def _contains(self, keys: list[bytes]) -> set[bytes]:
        raise NotImplementedError

    async def _remove(self, keys: list[bytes]) -> int:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _ping(self) -> None:
        raise NotImplementedError


def _unavailable(where: str, exc: BaseException) -> LeadperfError:
    from ..errors import CacheUnavailableError

    return CacheUnavailableError(
        f"dedup store at {where} is unreachable ({type(exc).__name__}); "
        "check the URL and that the server runs"
    )


class RedisDedupSet(DedupSet):
    """A :class:`DedupSet` in Redis: one ``SET key 1 NX`` per URL, all in one pipeline.

    One key per URL (``<namespace>:dedup:<name>:<digest hex>``), so the set spreads over a
    Redis Cluster's shards (``cluster=True``: the URL names any node of the cluster) and
    each URL can expire on its own (``ttl``).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "leadperf",
        timeout: float = 5.0,
        cluster: bool = False,
        **kw: Any,
    ):
        super().__init__(**kw)
        require("redis", "scale")
        from redis.asyncio import Redis, RedisCluster

        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"namespace: must be a non-empty str, got {namespace!r}")
        self._prefix = f"{namespace}:dedup:{self.name}:"
        self._where = mask_url(url) or "redis"
        factory: Any = RedisCluster if cluster else Redis
        self._client = factory.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def __repr__(self) -> str:
        return f"<RedisDedupSet {self._where} name={self.name!r}>"

    async def _add(self, keys: list[bytes]) -> set[bytes]:
        import redis

        px = None if self.ttl is None else max(1, math.ceil(self.ttl * 1000))
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.set(self._prefix + key.hex(), b"1", nx=True, px=px)
        try:
            replies = await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise _unavailable(self._where, exc) from None
        return {key for key, reply in zip(keys, replies, strict=True) if reply}

    async def _contains(self, keys: list[bytes]) -> set[bytes]:
        import redis

        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("EXISTS", self._prefix + key.hex())
        try:
            replies = await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise _unavailable(self._where, exc) from None
        return {key for key, reply in zip(keys, replies, strict=True) if reply}

    async def _remove(self, keys: list[bytes]) -> int:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("DEL", self._prefix + key.hex())
        return sum(int(n) for n in await pipe.execute())

    async def clear(self) -> int:
        """Delete every URL of this set (SCAN + UNLINK under its prefix); count deleted."""
        deleted = 0
        async for batch in _chunks(self._client.scan_iter(match=self._prefix + "*", count=500)):
            pipe = self._client.pipeline(transaction=False)
            for key in batch:  # one key per command: a cluster refuses cross-slot UNLINK
                pipe.execute_command("UNLINK", key)
            deleted += sum(int(n) for n in await pipe.execute())
        return deleted

    async def _close(self) -> None:
        await self._client.aclose()

    async def _ping(self) -> None:
        import redis

        try:
            await self._client.execute_command("PING")
        except (redis.RedisError, OSError) as exc:
            raise _unavailable(self._where, exc) from None


async def _chunks(items: Any, size: int = 500) -> Any:
    batch: list[Any] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class PostgresDedupSet(DedupSet):
    """A :class:`DedupSet` in one PostgreSQL table (``key bytea PRIMARY KEY, added_at``).

    ``add_many`` is one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` with the keys in
    sorted order, so concurrent workers inserting overlapping batches never deadlock and
    exactly one of them gets each URL. Durable: the set survives restarts of everything.
    The table (``table``, default ``leadperf_dedup_<name>``) is created on first use.
    """

    def __init__(self, url: str, *, table: str | None = None, pool_size: int = 2, **kw: Any):
        super().__init__(**kw)
        require("psycopg", "postgres")
        require("psycopg_pool", "postgres", "psycopg-pool")
        table = f"leadperf_dedup_{self.name}" if table is None else table
        if not isinstance(table, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
            raise ConfigError(f"table: must be a lower-case SQL identifier, got {table!r}")
        self.table = table
        self._dsn = url
        self._where = mask_url(url) or "postgresql"
        self._pool_size = pool_size
        self._pool: Any = None
        self._open_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresDedupSet {self._where} table={self.table!r}>"

    async def _ready(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is None:
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        pool: Any = AsyncConnectionPool(
            self._dsn, min_size=1, max_size=self._pool_size, kwargs={"autocommit": True}, open=False
        )
        try:
            await pool.open(wait=True, timeout=10.0)
            async with pool.connection() as conn, conn.transaction():
                # Concurrent CREATE TABLE IF NOT EXISTS of one table can still fail (on the
                # table's row type or its key's index name): workers opening at the same
                # moment take turns under a transaction-scoped advisory lock instead.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"leadperf-dedup:{self.table}",)
                )
                await conn.execute(
                    self._sql(
                        "CREATE TABLE IF NOT EXISTS {t} (key bytea PRIMARY KEY, "
                        "added_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
        except Exception as exc:
            await pool.close()
            raise _unavailable(self._where, exc) from None
        return pool

    def _sql(self, text: str) -> sql.Composed:
        """``text`` with ``{t}`` bound to the table, quoted as an identifier."""
        from psycopg import sql

        return sql.SQL(text).format(t=sql.Identifier(self.table))

    async def _add(self, keys: list[bytes]) -> set[bytes]:
        insert = (
            "INSERT INTO {t} AS d (key) SELECT k FROM unnest(%s::bytea[]) AS k "
            "ORDER BY k ON CONFLICT (key) "
        )
        params: tuple[Any, ...]
        if self.ttl is None:
            query, params = insert + "DO NOTHING RETURNING key", (sorted(keys),)
        else:
            # An entry older than ttl counts as absent: take it over and report it new.
            query = insert + (
                "DO UPDATE SET added_at = now() WHERE d.added_at "
                "< now() - make_interval(secs => %s) RETURNING key"
            )
            params = (sorted(keys), self.ttl)
        rows = await self._query(self._sql(query), params)
        return {bytes(row[0]) for row in rows}

    async def _contains(self, keys: list[bytes]) -> set[bytes]:
        query = "SELECT key FROM {t} WHERE key = ANY(%s::bytea[])"
        params: tuple[Any, ...] = (keys,)
        if self.ttl is not None:
            query += " AND added_at >= now() - make_interval(secs => %s)"
            params = (keys, self.ttl)
        rows = await self._query(self._sql(query), params)
        return {bytes(row[0]) for row in rows}

    async def _query(self, query: str | sql.Composed, params: tuple[Any, ...]) -> list[Any]:
        rows, _ = await self._execute(query, params, fetch=True)
        return rows

    async def _execute(
        self, query: str | sql.Composed, params: tuple[Any, ...], *, fetch: bool = False
    ) -> tuple[list[Any], int]:
        """Run ``query``; its rows (``fetch=True``) and row count. A lost server is typed."""
        import psycopg
        import psycopg_pool

        pool = await self._ready()
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(query, params)
                rows = list(await cursor.fetchall()) if fetch else []
                return rows, int(cursor.rowcount)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(self._where, exc) from None

    async def _remove(self, keys: list[bytes]) -> int:
        query = self._sql("DELETE FROM {t} WHERE key = ANY(%s::bytea[])")
        _, count = await self._execute(query, (keys,))
        return count

    async def clear(self) -> int:
        """Delete every URL of this set; count deleted."""
        _, count = await self._execute(self._sql("DELETE FROM {t}"), ())
        return count

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _ping(self) -> None:
        await self._query("SELECT 1", ())
