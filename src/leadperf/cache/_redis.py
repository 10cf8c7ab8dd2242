"""RedisCache: one redis.asyncio connection pool, a key namespace, MGET and pipelines."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from .._core.redact import secrets_of
from .._core.validate import positive_int, positive_number
from .._util import mask_url, require
from ..errors import ClosedError, ConfigError
from ._base import BaseCache

if TYPE_CHECKING:
    from ..config import Settings
    from ._codec import Codec

__all__ = ["RedisCache"]

_SCHEMES = ("redis", "rediss", "unix")
_GLOB_SPECIAL = "\\*?[]^"


def _escape_glob(text: str) -> str:
    """Escape every Redis glob metacharacter so ``text`` matches only itself."""
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def redis_match(prefix: str, pattern: str | None) -> str:
    """SCAN MATCH for ``pattern`` (only ``*`` and ``?`` wild) under literal ``prefix``."""
    if pattern is None:
        return _escape_glob(prefix) + "*"
    body = "".join(ch if ch in "*?" else _escape_glob(ch) for ch in pattern)
    return _escape_glob(prefix) + body


def _px(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisCache(BaseCache):
    """Cache in Redis through one ``redis.asyncio`` connection pool.

    ``url`` (``redis://``, ``rediss://`` or ``unix://``) defaults to
    ``settings.cache.redis_url``. Keys are stored as ``"<namespace>:<key>"`` and
    ``clear()`` only ever touches that prefix (SCAN + UNLINK, never KEYS); ``get_many`` is
    one MGET and ``set_many`` one pipelined write.
    ``connect_timeout`` and ``timeout`` (seconds) bound connecting and each command, so an
    unreachable server fails fast; ``max_connections`` caps the pool (default 50).
    Needs ``pip install 'leadperf[redis]'``.
    """

    scheme = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "leadperf",
        default_ttl: float | None = None,
        codec: Codec | None = None,
        raise_errors: bool = False,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        max_connections: int = 50,
        max_value_size: int | None = None,
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
        url = url or self._settings.cache.redis_url
        if not url:
            raise ConfigError(
                "url: no Redis URL given; pass one or set REDIS_URL (e.g. redis://127.0.0.1:6379/0)",
                key="url",
            )
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ConfigError(
                f"url: a Redis URL must start with redis://, rediss:// or unix://, got "
                f"{mask_url(url) if isinstance(url, str) else url!r}",
                key="url",
            )
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            positive_number(value, name, finite=False)
        positive_int(max_connections, "max_connections")
        self.url = url
        self._secrets = secrets_of(url)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.max_connections = max_connections
        redis = require("redis", "redis")
        self._set_unavailable(redis.exceptions.RedisError, OSError)
        self._pool: Any = None
        self._idle: list[Any] = []
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._total = 0
        self._retryable = (redis.exceptions.ConnectionError, ConnectionError)

    def __repr__(self) -> str:
        return f"RedisCache(url={mask_url(self.url)!r}, namespace={self.namespace!r})"

    # -- lifecycle ------------------------------------------------------------------------

    async def _open(self) -> None:
        aioredis = require("redis.asyncio", "redis", "redis")
        # redis-py's pool only creates and connects connections here; this class hands
        # them out itself (see _acquire). No socket_timeout: redis-py enforces it with
        # asyncio.wait_for around every send and read (a task each on Python 3.11); one
        # asyncio.timeout per exchange bounds the whole round trip for less.
        pool = aioredis.ConnectionPool.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,  # redis-py's default (5 s) would add the wait_for calls
            max_connections=self.max_connections,
        )
        self._pool = pool
        try:
            async with asyncio.timeout(self.connect_timeout + self.timeout):
                await self._command("PING")
        except BaseException:
            self._pool = None
            await self._drop_all(pool)
            raise

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._drop_all(pool)

    async def _drop_all(self, pool: Any) -> None:
        self._idle.clear()
        self._total = 0
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ClosedError(f"{self!r} was closed while waiting"))
        self._waiters.clear()
        with anyio.CancelScope(shield=True):
            await pool.disconnect()

    # -- connections ----------------------------------------------------------------------
    # redis-py's ConnectionPool.get_connection/release cost about 50 us per call (a lock
    # and observability hooks), as much as a loopback round trip. Connections are taken
    # from it once and then handed out from a free list, capped at max_connections.

    async def _acquire(self) -> Any:
        if self._idle:
            return self._idle.pop()
        if self._total < self.max_connections:
            self._total += 1
            try:
                return await self._pool.get_connection()
            except BaseException:
                self._total -= 1
                raise
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _release(self, conn: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _exchange(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies, on one connection.

        A reply left unread (error, timeout, cancellation) means the connection is
        disconnected before reuse, so it never hands a stale reply to the next caller; it
        reconnects on next use. A connection the server dropped (a restart) is retried
        once on a fresh one.
        """
        for attempt in (0, 1):
            conn = await self._acquire()
            done = False
            try:
                async with asyncio.timeout(self.timeout):
                    if len(commands) == 1:
                        await conn.send_command(*commands[0])
                    else:
                        await conn.send_packed_command(conn.pack_commands(commands))
                    replies = [await conn.read_response() for _ in commands]
                done = True
                return replies
            except self._retryable:
                if attempt:
                    raise
            finally:
                if not done:
                    with anyio.CancelScope(shield=True):
                        await conn.disconnect()
                self._release(conn)
        raise AssertionError("unreachable")

    async def _command(self, *args: Any) -> Any:
        return (await self._exchange((args,)))[0]

    # -- primitives -----------------------------------------------------------------------

    async def _get(self, key: str) -> Any:
        return await self._command("GET", key)

    async def _get_with_ttl(self, key: str) -> tuple[Any, float | None] | None:
        stored, pttl = await self._exchange((("GET", key), ("PTTL", key)))
        if stored is None:
            return None
        return stored, (pttl / 1000.0 if pttl >= 0 else None)

    async def _get_many(self, keys: list[str]) -> Sequence[Any]:
        result: list[Any] = await self._command("MGET", *keys)
        return result

    async def _get_many_with_ttl(
        self, keys: list[str]
    ) -> Sequence[tuple[Any, float | None] | None]:
        values, *pttls = await self._exchange([("MGET", *keys), *(("PTTL", k) for k in keys)])
        return [
            None if v is None else (v, p / 1000.0 if p >= 0 else None)
            for v, p in zip(values, pttls, strict=True)
        ]

    async def _set(self, key: str, stored: Any, ttl: float) -> None:
        await self._command("SET", key, stored, "PX", _px(ttl))

    async def _set_many(self, items: list[tuple[str, Any]], ttl: float) -> None:
        px = _px(ttl)
        await self._exchange([("SET", key, stored, "PX", px) for key, stored in items])

    async def _add(self, key: str, stored: Any, ttl: float) -> bool:
        return await self._command("SET", key, stored, "PX", _px(ttl), "NX") is not None

    async def _delete(self, key: str) -> bool:
        return bool(await self._command("DEL", key))

    async def _exists(self, key: str) -> bool:
        return bool(await self._command("EXISTS", key))

    async def _clear(self, pattern: str | None) -> int:
        match = redis_match(self._prefix, pattern)
        removed = 0
        cursor: Any = 0
        while True:
            cursor, keys = await self._command("SCAN", cursor, "MATCH", match, "COUNT", 1000)
            if keys:
                removed += int(await self._command("UNLINK", *keys))
            if int(cursor) == 0:
                return removed
