"""leadperf's own HTTP/1.1 engine: asyncio protocols over a keep-alive connection pool.

Bulk scraping spends most of a general client's time in machinery it does not need per
request: pool scans, tracing hooks, cookie jars, stream objects, per-phase timers. This
engine keeps one :class:`asyncio.Protocol` per connection that parses the response as
bytes arrive and resolves one future, one timer per request bounds the whole exchange,
and the pool is a LIFO list of idle connections per origin. What it does not do, by
design: cookies (each request stands alone), proxies, HTTP/2, and streaming bodies (the
scraper reads whole bodies). It runs on asyncio only.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json as _json
import re
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

from .. import __version__
from .._util import mask_url
from ..errors import ConfigError, InvalidURLError, ScrapeConnectionError
from ._engine import RawHeaders, Response, connection_error, invalid_url_error, timeout_error

__all__ = ["NativeEngine"]

_MAX_HEAD = 64 * 1024  # a response head larger than this is refused, as by most clients
_MAX_REDIRECTS = 20
_KEEPALIVE_EXPIRY = 15.0  # seconds an idle connection is trusted (what aiohttp uses too)
_DNS_TTL = 10.0  # seconds a host name lookup is reused (aiohttp's default too)
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"

try:  # brotli is a core dependency; the guard keeps a broken install usable
    import brotli as _brotli

    _ACCEPT_ENCODING = "gzip, deflate, br"
    _DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _brotli.error)
except ImportError:  # pragma: no cover
    _brotli = None
    _ACCEPT_ENCODING = "gzip, deflate"
    _DECODE_ERRORS = (zlib.error,)

_USER_AGENT = f"leadperf/{__version__}"

#: ``scheme://netloc`` with a plain netloc (no userinfo, no IPv6 literal, lower case), then
#: the request target up to any fragment.
_PLAIN_URL = re.compile(r"(https?://[a-z0-9][a-z0-9.\-]*(?::[0-9]{1,5})?)([/?][^#\s]*)?(?:#|\Z)")

Origin = tuple[str, str, int]  # scheme, host, port


class _ProtocolError(Exception):
    """The peer broke HTTP/1.1; the connection is dropped and the request fails."""


class _Exchange:
    """What one request's future resolves to: status, flat raw headers, body, encoding."""

    __slots__ = ("body", "encoding", "headers", "status")

    def __init__(
        self, status: int, headers: tuple[bytes, ...], body: bytes, encoding: bytes | None
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.encoding = encoding


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time into ``waiter``."""

    __slots__ = (
        "_body_mode",
        "_buf",
        "_chunks",
        "_encoding",
        "_head_only",
        "_headers",
        "_need",
        "_status",
        "closed",
        "got_bytes",
        "idle_since",
        "keep_alive",
        "origin",
        "pool",
        "transport",
        "uses",
        "waiter",
    )

    def __init__(self, pool: _Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[_Exchange] | None = None
        self.closed = False
        self.keep_alive = True
        self.got_bytes = False
        self.idle_since = 0.0
        self.uses = 0
        self._buf = b""
        self._head_only = False
        self._status = 0
        self._headers: tuple[bytes, ...] = ()
        self._encoding: bytes | None = None
        self._body_mode = 0  # 0: head, 1: content-length, 2: chunked, 3: until close
        self._need = 0
        self._chunks: list[bytes] = []

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self._body_mode == 3:  # the body runs until the peer closes: it is complete
                self._finish(b"".join(self._chunks) + self._buf)
            else:
                reason = f": {exc}" if exc is not None else ""
                waiter.set_exception(
                    ConnectionResetError(f"the server closed the connection mid-response{reason}")
                )
        self.pool.lost(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            # Bytes nobody asked for (an idle connection's late 408, a reply after a
            # timeout): the stream can no longer be trusted.
            self.keep_alive = False
            self.abort()
            return
        self.got_bytes = True
        buf = self._buf + data if self._buf else data
        try:
            self._feed(buf)
        except (_ProtocolError, ValueError) as exc:
            self.keep_alive = False
            if not self.waiter.done():
                self.waiter.set_exception(_ProtocolError(str(exc) or type(exc).__name__))
            self.abort()

    # -- parsing --------------------------------------------------------------------------

    def _feed(self, buf: bytes) -> None:
        while True:
            mode = self._body_mode
            if mode == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise _ProtocolError("response head larger than 64 KiB")
                    self._buf = buf
                    return
                if not self._head(buf[:end]):
                    buf = buf[end + 4 :]  # an interim 1xx response: the real one follows
                    continue
                buf = buf[end + 4 :]
                if self._body_mode == 0:  # no body at all
                    self._finish(b"", buf)
                    return
                continue
            if mode == 1:
                need = self._need
                if len(buf) < need:  # keep the part, so a large body is not copied again
                    self._chunks.append(buf)
                    self._need = need - len(buf)
                    self._buf = b""
                    return
                if self._chunks:
                    self._chunks.append(buf[:need])
                    body = b"".join(self._chunks)
                else:
                    body = buf[:need] if len(buf) > need else buf
                self._finish(body, buf[need:])
                return
            if mode == 2:
                self._buf = self._chunked(buf)  # b"" once the body is complete
                return
            # until close: keep everything
            self._chunks.append(buf)
            self._buf = b""
            return

    def _head(self, head: bytes) -> bool:
        """Parse a status line and headers; False for an interim 1xx response."""
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1."):
            raise _ProtocolError(f"not an HTTP/1.x response: {status_line[:40]!r}")
        status = int(status_line[9:12])
        if 100 <= status < 200 and status != 101:
            return False
        flat: list[bytes] = []
        length = -1
        chunked = False
        keep_alive = status_line[7:8] == b"1"  # HTTP/1.1 defaults to keep-alive, 1.0 not
        encoding = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                if line[:1] in (b" ", b"\t") and flat:  # obsolete line folding
                    flat[-1] = flat[-1] + b" " + line.strip()
                    continue
                raise _ProtocolError(f"malformed header line {line[:40]!r}")
            value = value.strip()
            flat.append(name)
            flat.append(value)
            size = len(name)
            if size == 14:
                if name.lower() == b"content-length":
                    length = int(value)
                    if length < 0:
                        raise _ProtocolError("negative Content-Length")
            elif size == 17:
                if name.lower() == b"transfer-encoding":
                    chunked = value.lower().endswith(b"chunked")
            elif size == 10:
                if name.lower() == b"connection":
                    token = value.lower()
                    if b"close" in token:
                        keep_alive = False
                    elif b"keep-alive" in token:
                        keep_alive = True
            elif size == 16 and name.lower() == b"content-encoding":
                encoding = value.lower()
        self._status = status
        self._headers = tuple(flat)
        self._encoding = encoding
        self.keep_alive = keep_alive
        if self._head_only or status in (204, 304) or status == 101:
            self._body_mode = 0
        elif chunked:
            self._body_mode = 2
            self._need = -1
        elif length >= 0:
            self._body_mode = 1 if length else 0
            self._need = length
        else:
            self._body_mode = 3
            self.keep_alive = False
        return True

    def _chunked(self, buf: bytes) -> bytes:
        """Consume chunked framing from ``buf``; returns what is left unparsed."""
        chunks = self._chunks
        while True:
            need = self._need
            if need == -1:  # a chunk-size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise _ProtocolError("chunk size line too long")
                    return buf
                size = int(buf[:end].split(b";", 1)[0].strip(), 16)
                buf = buf[end + 2 :]
                if size == 0:
                    self._need = -2
                else:
                    self._need = size + 2  # the data and its CRLF
                continue
            if need == -2:  # trailers, up to an empty line
                if buf.startswith(b"\r\n"):
                    rest = buf[2:]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEAD:
                            raise _ProtocolError("chunked trailers larger than 64 KiB")
                        return buf
                    rest = buf[end + 4 :]
                self._finish(b"".join(chunks), rest)
                return b""
            if len(buf) < need:
                if len(buf) <= need - 2:  # only data: keep it and wait for the rest
                    if buf:
                        chunks.append(buf)
                        self._need = need - len(buf)
                    return b""
                return buf  # the data is here, its CRLF not yet
            if buf[need - 2 : need] != b"\r\n":
                raise _ProtocolError("chunk data not followed by CRLF")
            chunks.append(buf[: need - 2])
            buf = buf[need:]
            self._need = -1

    def _finish(self, body: bytes, rest: bytes = b"") -> None:
        if rest:  # nothing was asked for beyond this response
            self.keep_alive = False
        waiter = self.waiter
        exchange = _Exchange(self._status, self._headers, body, self._encoding)
        self._buf = b""
        self._chunks = []
        self._body_mode = 0
        if waiter is not None and not waiter.done():
            waiter.set_result(exchange)

    # -- used by the engine ---------------------------------------------------------------

    def send(self, data: bytes, head_only: bool, waiter: asyncio.Future[_Exchange]) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.got_bytes = False
        self._head_only = head_only
        self._body_mode = 0
        self._buf = b""
        self._chunks = []
        self.uses += 1
        self.transport.write(data)

    def abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()


Address = tuple[int, str]  # socket family, numeric host


class _Resolver:
    """Host name lookups cached for a few seconds, one lookup in flight per name.

    Opening 200 connections to one site must not cost 200 lookups through the executor;
    the address that connected last is tried first next time (``localhost`` answers
    ``::1`` first, and many local servers listen on 127.0.0.1 only).
    """

    def __init__(self, ttl: float = _DNS_TTL) -> None:
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}

    async def resolve(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[Address]:
        if _is_ip(host):
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        key = (host, port)
        entry = self._cache.get(key)
        now = loop.time()
        if entry is not None and entry[0] > now:
            return entry[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[Address]] = loop.create_future()
        self._pending[key] = future
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses: list[Address] = []
            for family, _, _, _, sockaddr in infos:
                address = (int(family), str(sockaddr[0]))
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise OSError(f"no address found for {host}")
            if len(self._cache) >= 1024:
                self._cache.clear()
            self._cache[key] = (loop.time() + self.ttl, addresses)
            future.set_result(addresses)
            return addresses
        except BaseException as exc:
            # Whoever waits on this lookup gets an error to retry on, never our cancellation.
            shared = exc if isinstance(exc, Exception) else OSError(f"lookup of {host} stopped")
            future.set_exception(shared)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._pending[key]

    def worked(self, host: str, port: int, address: Address) -> None:
        entry = self._cache.get((host, port))
        if entry is not None and entry[1][0] != address and address in entry[1]:
            rest = [a for a in entry[1] if a != address]
            self._cache[(host, port)] = (entry[0], [address, *rest])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Pool:
    """Keep-alive connections per origin under one cap on all open connections."""

    def __init__(self, max_connections: int) -> None:
        self.max = max_connections
        self.count = 0  # open and opening
        self.idle: dict[Origin, list[_Connection]] = {}
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.dns = _Resolver()
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def take_idle(self, origin: Origin, now: float) -> _Connection | None:
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
                and now - conn.idle_since < _KEEPALIVE_EXPIRY
            ):
                found = conn
                break
            self._drop(conn)
        if not idle:  # only origins with idle connections stay: 100K hosts leave no trail
            del self.idle[origin]
        return found

    async def connect(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> _Connection:
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
        conn = _Connection(self, origin)
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

    def release(self, conn: _Connection, now: float) -> None:
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

    def _drop(self, conn: _Connection) -> None:
        conn.waiter = None
        if not conn.closed:
            conn.abort()  # connection_lost will call lost(), which forgets it
            conn.closed = True
        self._forget(conn)

    def lost(self, conn: _Connection) -> None:
        idle = self.idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self.idle[conn.origin]
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        if conn.uses >= 0:  # counted once: uses is set to -1 when forgotten
            conn.uses = -1
            self.count -= 1
            self._wake()

    def _evict_one(self) -> bool:
        """Close the longest-idle connection of any origin to make room; False if none."""
        oldest: _Connection | None = None
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


class _Target:
    """A parsed request URL: origin, request target, Host header and Authorization."""

    __slots__ = ("auth", "host_header", "origin", "target", "url")

    def __init__(
        self, url: str, origin: Origin, target: str, host_header: str, auth: str | None
    ) -> None:
        self.url = url
        self.origin = origin
        self.target = target
        self.host_header = host_header
        self.auth = auth


def _parse_url(url: str, params: Mapping[str, Any] | None) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except (ValueError, TypeError) as exc:
        raise InvalidURLError(f"{mask_url(str(url))} is not a valid URL ({exc})", url=url) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise invalid_url_error(url)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURLError(f"{mask_url(url)} has an invalid host name", url=url) from exc
    default = 443 if scheme == "https" else 80
    if port is None:
        port = default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = parts.path or "/"
    query = parts.query
    if not path.isascii() or " " in path:
        path = quote(path, safe=_SAFE_PATH)
    if query and (not query.isascii() or " " in query):
        query = quote(query, safe=_SAFE_QUERY)
    if params:
        extra = urlencode(params, doseq=True)
        query = f"{query}&{extra}" if query else extra
    target = f"{path}?{query}" if query else path
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return _Target(url, (scheme, host, port), target, host_header, auth)


def _check_header(name: str, value: str) -> None:
    if "\r" in name or "\n" in name or ":" in name or "\r" in value or "\n" in value:
        raise ConfigError(
            f"header {name!r}: names and values may not contain CR, LF (or ':' in names)",
            key="headers",
        )


Headers = dict[str, tuple[str, str]]  # lower-cased name -> (name as given, value)


def _checked(headers: Mapping[str, str]) -> Headers:
    merged = {name.lower(): (name, str(value)) for name, value in headers.items()}
    for name, value in merged.values():
        _check_header(name, value)
    if "host" in merged:  # spelled as the request writer looks for it: sent instead of ours
        merged["host"] = ("Host", merged["host"][1])
    return merged


def _block(headers: Headers) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.values())


def _decompress(body: bytes, encoding: bytes) -> bytes:
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(body)
    if encoding == b"deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    if encoding == b"br" and _brotli is not None:
        return bytes(_brotli.decompress(body))
    return body  # identity, or a coding we did not ask for: handed over as sent


class NativeEngine:
    """leadperf's own lean HTTP/1.1 engine (asyncio only; the fast default)."""

    name = "native"

    def __init__(
        self, *, max_connections: int, timeout: float, headers: Mapping[str, str] | None
    ) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "engine: 'native' runs on asyncio only; under another event loop (trio) "
                "use engine='httpx'",
                key="engine",
            ) from None
        self._timeout = timeout
        defaults = {"User-Agent": _USER_AGENT, "Accept": "*/*", "Accept-Encoding": _ACCEPT_ENCODING}
        self._defaults = _checked({**defaults, **(headers or {})})
        self._default_block = _block(self._defaults)
        self._pool = _Pool(max_connections)
        self._origins: dict[str, tuple[Origin, str]] = {}  # "scheme://netloc" -> origin

    def _target(self, url: str, params: Mapping[str, Any] | None) -> _Target:
        # The bulk case, a plain http(s)://host[:port]/ascii-path URL, skips urlsplit and
        # reuses the origin parsed for its scheme and netloc; anything else: full parse.
        match = None if params else _PLAIN_URL.match(url)
        if match is None or not url.isascii():
            return _parse_url(url, params)
        prefix = url[: match.end(1)]
        known = self._origins.get(prefix)
        if known is None:
            target = _parse_url(url, None)
            if len(self._origins) >= 1024:
                self._origins.clear()
            self._origins[prefix] = (target.origin, target.host_header)
            return target
        rest = match.group(2)
        if not rest:
            rest = "/"
        elif rest[0] == "?":
            rest = "/" + rest
        return _Target(url, known[0], rest, known[1], None)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> Response:
        start = time.perf_counter()
        loop = self._loop
        budget = self._timeout if timeout is None else timeout
        deadline = loop.time() + budget
        method = method.upper()
        body = b""
        content_type = None
        if content is not None:
            body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        elif data is not None:
            body = urlencode(data, doseq=True).encode("ascii")
            content_type = "application/x-www-form-urlencoded"
        elif json is not None:
            body = _json.dumps(json, separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        extra = ""
        if headers:
            merged = _checked(headers)
            if content_type is not None and "content-type" not in merged:
                merged["content-type"] = ("Content-Type", content_type)
            block = _block({**self._defaults, **merged})
        else:
            block = self._default_block
            if content_type is not None:
                extra = f"Content-Type: {content_type}\r\n"
        target = self._target(url, params)
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                exchange = await self._exchange(method, target, block + extra, body, deadline)
                status = exchange.status
                if not follow_redirects or status not in _REDIRECTS:
                    break
                location = _header(exchange.headers, b"location")
                if location is None:
                    break
                new_url = urljoin(target.url, location.decode("latin-1"))
                new_target = _parse_url(new_url, None)
                if (status == 303 and method != "HEAD") or (
                    status in (301, 302) and method == "POST"
                ):
                    method, body, extra = "GET", b"", ""
                    block = _without(block, ("content-type", "content-length"))
                if new_target.origin != target.origin:
                    block = _without(block, ("authorization", "cookie", "host"))
                target = new_target
            else:
                raise ScrapeConnectionError(
                    f"{mask_url(url)}: more than {_MAX_REDIRECTS} redirects", url=url
                )
            content_bytes = exchange.body
            if exchange.encoding is not None and content_bytes:
                content_bytes = _decompress(content_bytes, exchange.encoding)
        except TimeoutError as exc:
            raise timeout_error(url, budget) from exc
        except (OSError, _ProtocolError) as exc:
            raise connection_error(url, exc) from exc
        except _DECODE_ERRORS as exc:
            raise ScrapeConnectionError(
                f"{mask_url(url)}: the body does not decode as its Content-Encoding says "
                f"({type(exc).__name__}: {exc})",
                url=url,
            ) from exc
        return Response(
            exchange.status,
            content_bytes,
            RawHeaders.from_flat(exchange.headers),
            target.url,
            time.perf_counter() - start,
        )

    async def _exchange(
        self, method: str, target: _Target, block: str, body: bytes, deadline: float
    ) -> _Exchange:
        loop = self._loop
        pool = self._pool
        auth = ""
        if target.auth is not None and "authorization:" not in block.lower():
            auth = f"Authorization: {target.auth}\r\n"
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        host = "" if block.startswith("Host: ") or "\nHost: " in block else target.host_header
        host_line = f"Host: {host}\r\n" if host else ""
        head = f"{method} {target.target} HTTP/1.1\r\n{host_line}{block}{auth}{length}\r\n"
        try:
            data = head.encode("latin-1") + body
        except UnicodeEncodeError as exc:
            raise ConfigError(
                f"header values must be latin-1 text ({exc}); percent-encode or drop them",
                key="headers",
            ) from exc
        for fresh_try in (False, True):
            if loop.time() >= deadline:
                raise TimeoutError
            conn = pool.take_idle(target.origin, loop.time())
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await pool.connect(target.origin, loop)
            reused = conn.uses > 0
            waiter: asyncio.Future[_Exchange] = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                conn.send(data, method == "HEAD", waiter)
                exchange = await waiter
            except ConnectionResetError:
                timer.cancel()
                pool.release(conn, 0.0)
                # A reused connection the server closed while idle: safe to send again.
                if reused and not conn.got_bytes and not fresh_try and method in _IDEMPOTENT:
                    continue
                raise
            except BaseException:
                timer.cancel()
                conn.abort()
                pool.release(conn, 0.0)
                raise
            timer.cancel()
            pool.release(conn, loop.time())
            return exchange
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self._pool.close()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost


def _expire(waiter: asyncio.Future[_Exchange]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _header(flat: tuple[bytes, ...], name: bytes) -> bytes | None:
    for i in range(0, len(flat), 2):
        if flat[i].lower() == name:
            return flat[i + 1]
    return None


def _without(block: str, names: tuple[str, ...]) -> str:
    lines = block.split("\r\n")
    kept = [line for line in lines if line.partition(":")[0].strip().lower() not in names]
    return "\r\n".join(kept)
