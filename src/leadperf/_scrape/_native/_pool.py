"""The native engine's connections: one asyncio protocol each, in a LIFO keep-alive pool.

A :class:`Connection` feeds what it reads to its :class:`ResponseParser` and resolves one
future per request; bytes nobody asked for (a late answer after a timeout, an idle
connection's 408) end the connection instead of being read as the next response. The
:class:`Pool` keeps idle connections per origin, most recently used first, under one cap
on every open connection whatever the origin, evicting the longest-idle one to make room.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from ...errors import ScrapeConnectionError
from .._request import Limits
from ._parser import BadResponse, Busy, Exchange, ResponseParser, TooLarge
from ._resolve import Resolver

__all__ = ["KEEPALIVE_EXPIRY", "Connection", "Origin", "Pool"]

KEEPALIVE_EXPIRY = 15.0  # seconds an idle connection is trusted (what aiohttp uses too)

Origin = tuple[str, str, int]  # scheme, host, port


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time into ``waiter``."""

    __slots__ = (
        "closed",
        "idle_since",
        "keep_alive",
        "origin",
        "parser",
        "paused",
        "pool",
        "transport",
        "uses",
        "waiter",
    )

    def __init__(self, pool: Pool, origin: Origin, parser: ResponseParser) -> None:
        self.pool = pool
        self.origin = origin
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Exchange] | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self.uses = 0
        self.paused = False  # reading paused while decoding catches up

    @property
    def got_bytes(self) -> bool:
        """True once a byte of the current response arrived."""
        return self.parser.fed > 0

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            try:
                waiter.set_result(self.parser.eof(exc))
            except (BadResponse, TooLarge, ConnectionResetError) as error:
                waiter.set_exception(error)
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (an idle connection's late 408, a reply after a
            # timeout): the stream can no longer be trusted.
            self.abort()
            return
        try:
            result = self.parser.feed(data)
        except (BadResponse, TooLarge) as exc:
            waiter.set_exception(exc)
            self.abort()
            return
        if result is not None:
            self._settle(result, waiter)

    def _settle(self, result: Exchange | Busy, waiter: asyncio.Future[Exchange]) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(result, Busy):
            # Decoding has more work than one callback should do (a compression bomb
            # stopping at its cap, a large compressed body): stop reading, go on later,
            # and let the loop (and the request's deadline timer) run in between.
            if not self.paused:
                self.paused = True
                transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._pump)
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if not result.reusable:
            self.keep_alive = False
        waiter.set_result(result)

    def _pump(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done() or self.closed:
            return  # timed out meanwhile: the engine drops this connection
        try:
            result = self.parser.pump()
        except (BadResponse, TooLarge) as exc:
            waiter.set_exception(exc)
            self.abort()
            return
        if result is not None:
            self._settle(result, waiter)
        elif self.paused and self.transport is not None:
            self.paused = False  # the body decoded so far: read the rest
            self.transport.resume_reading()

    # -- used by the engine ---------------------------------------------------------------

    def send(self, data: bytes, head_only: bool, waiter: asyncio.Future[Exchange]) -> None:
        """Write one request; its response resolves ``waiter``."""
        assert self.transport is not None
        self.waiter = waiter
        self.parser.start(head_only)
        self.uses += 1
        self.transport.write(data)

    def abort(self) -> None:
        """Close at once (no graceful shutdown): the connection is never used again."""
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections per origin under one cap on all open connections."""

    def __init__(self, max_connections: int, limits: Limits) -> None:
        self.max = max_connections
        self.limits = limits
        self.count = 0  # open and opening
        self.idle: dict[Origin, list[Connection]] = {}
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.dns = Resolver()
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def take_idle(self, origin: Origin, now: float) -> Connection | None:
        """The most recently used healthy idle connection to ``origin``, if any."""
        idle = self.idle.get(origin)
        if idle is None:
            return None
        found = None
        while idle:
            conn = idle.pop()
            if (
                not conn.closed
                and conn.transport is not None
                and not conn.transport.is_closing()
                and now - conn.idle_since < KEEPALIVE_EXPIRY
            ):
                found = conn
                break
            self._drop(conn)
        if not idle:  # only origins with idle connections stay: 100K hosts leave no trail
            del self.idle[origin]
        return found

    async def connect(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> Connection:
        """A new connection once the cap allows (or an idle one freed meanwhile)."""
        while self.count >= self.max:
            if self.closed:
                raise ScrapeConnectionError("the engine is closed")
            if self._evict_one():
                continue
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._wake()  # pass on a wake-up this waiter may have taken
                raise
            conn = self.take_idle(origin, loop.time())
            if conn is not None:
                return conn
        if self.closed:
            raise ScrapeConnectionError("the engine is closed")
        self.count += 1
        conn = Connection(self, origin, ResponseParser(self.limits))
        scheme, host, port = origin
        try:
            addresses = await self.dns.resolve(host, port, loop)
            error: OSError | None = None
            for family, address in addresses:
                try:
                    if scheme == "https":
                        await loop.create_connection(
                            lambda: conn,
                            address,
                            port,
                            family=family,
                            ssl=self.ssl_context(),
                            server_hostname=host,
                        )
                    else:
                        await loop.create_connection(lambda: conn, address, port, family=family)
                except OSError as exc:
                    if isinstance(exc, ssl.SSLError):
                        raise  # the peer answered: another address would not help
                    error = exc
                    continue
                self.dns.worked(host, port, (family, address))
                return conn
            assert error is not None
            raise error
        except BaseException:
            conn.closed = True
            self._forget(conn)
            raise

    def release(self, conn: Connection, now: float) -> None:
        """Give a connection back after a complete response."""
        conn.waiter = None
        if self.closed or not conn.keep_alive or conn.closed:
            self._drop(conn)
            return
        conn.idle_since = now
        idle = self.idle.get(conn.origin)
        if idle is None:
            self.idle[conn.origin] = [conn]
        else:
            idle.append(conn)
        self._wake()

    def _drop(self, conn: Connection) -> None:
        conn.waiter = None
        if not conn.closed:
            conn.abort()  # connection_lost will call lost(), which forgets it
            conn.closed = True
        self._forget(conn)

    def lost(self, conn: Connection) -> None:
        idle = self.idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self.idle[conn.origin]
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        if conn.uses >= 0:  # counted once: uses is set to -1 when forgotten
            conn.uses = -1
            self.count -= 1
            self._wake()

    def _evict_one(self) -> bool:
        """Close the longest-idle connection of any origin to make room; False if none."""
        oldest: Connection | None = None
        for conns in self.idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        conns = self.idle[oldest.origin]
        conns.remove(oldest)
        if not conns:
            del self.idle[oldest.origin]
        self._drop(oldest)
        return True

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conns in list(self.idle.values()):
            for conn in list(conns):
                self._drop(conn)
        self.idle.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
