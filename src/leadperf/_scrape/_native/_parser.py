"""HTTP/1.1 responses parsed by ``httptools`` (llhttp, Node.js's parser) in strict mode.

llhttp refuses what a hand-written parser lets through: two ``Content-Length`` headers,
``Content-Length`` with ``Transfer-Encoding``, lengths and chunk sizes that are not plain
digits (``+5``, ``0x5``, ``1_0``), NUL, bare CR or other control bytes in a header,
whitespace before a colon, bad status lines. No lenient flag is ever set. On top of it
this adapter refuses what llhttp allows a response to do but a client never asked for
(a ``Transfer-Encoding`` other than ``chunked``, an unsolicited ``101``, an HTTP version
other than 1.0/1.1), enforces :class:`~leadperf._scrape._request.Limits` however the
bytes arrive, decodes the body incrementally under the decoded-size cap, and says
whether the connection may carry another request (never after bytes it did not expect).
"""

from __future__ import annotations

import httptools

from .._request import Limits
from ._decode import BadResponse, Decoder, TooLarge, body_too_large, make_decoder

__all__ = ["BUSY", "BadResponse", "Busy", "Exchange", "ResponseParser", "TooLarge"]


class Exchange:
    """One complete response: status, flat raw headers, decoded body, reusability."""

    __slots__ = ("body", "headers", "reusable", "status")

    def __init__(self, status: int, headers: tuple[bytes, ...], body: bytes, reusable: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.reusable = reusable


class Busy:
    """The type of :data:`BUSY`."""


BUSY = Busy()  # decoding has work left: pause reading, call pump() on a later callback
_STEPS = 4  # decode steps (256 KiB each, about 1 MiB in all) per event-loop callback


class _Stop(Exception):
    """Raised from a callback to make llhttp stop: the response is complete."""


class ResponseParser:
    """Parses the responses of one connection, one request at a time.

    :meth:`start` before each request; :meth:`feed` every read, which returns the
    :class:`Exchange` once the response is complete; :meth:`eof` when the peer closes.
    Raises :class:`BadResponse` or :class:`TooLarge`; after either, the connection is
    dropped (the parser state is not trusted again).
    """

    __slots__ = (
        "_body",
        "_budget",
        "_decoder",
        "_done",
        "_encoding",
        "_ending",
        "_error",
        "_framed",
        "_head",
        "_head_bytes",
        "_head_fed",
        "_head_only",
        "_head_seen",
        "_headers",
        "_headers_done",
        "_interim",
        "_interims",
        "_keep_alive",
        "_leftover",
        "_length",
        "_limits",
        "_p",
        "_raw",
        "_stall",
        "_status",
        "fed",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._p = httptools.HttpResponseParser(self)
        self.start(False)

    def start(self, head_only: bool) -> None:
        """Expect the response to a new request (``head_only`` for HEAD: no body)."""
        self._head_only = head_only
        self._head_seen: list[bytes] = []  # HEAD: every byte read, to find where it ends
        self._interims = 0
        self._done: Exchange | None = None
        self._error: BaseException | None = None
        self._leftover = False
        self._head_fed = 0
        self._head_bytes = 0
        self._stall = 0
        self.fed = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._headers: list[bytes] = []
        self._head: tuple[bytes, ...] = ()
        self._headers_done = False
        self._interim = False
        self._framed = False
        self._length = -1
        self._encoding: bytes | None = None
        self._decoder: Decoder | None = None
        self._ending = False  # the message ended; its body is still being decoded
        self._budget = 0  # decode steps this event-loop callback may still take
        self._body: list[bytes] = []
        self._raw = 0
        self._status = 0
        self._keep_alive = False

    # -- driven by the connection ---------------------------------------------------------

    def feed(self, data: bytes) -> Exchange | Busy | None:
        """Parse one read: the :class:`Exchange` once the response is complete, None for
        more bytes, or :data:`BUSY` while decoding has work left (call :meth:`pump` later,
        reading paused)."""
        size = len(data)
        self._budget = _STEPS
        self.fed += size
        headers_done = self._headers_done
        if not headers_done:
            self._head_fed += size
        raw_before = self._raw
        if self._head_only:
            self._head_seen.append(data)
        try:
            self._p.feed_data(data)
        except httptools.HttpParserError as exc:
            error = self._error
            if self._done is None and not self._ending:
                if isinstance(error, BadResponse | TooLarge):
                    raise error from None
                raise BadResponse(_reason(exc)) from None
            # Anything after the complete response (a second response, junk, data after
            # "Connection: close"): the answer stands, the connection is never reused.
            # (A HEAD response stops llhttp on purpose and has judged this itself.)
            if not self._head_only:
                self._leftover = True
        done = self._done
        if done is not None:
            if self._leftover:
                done.reusable = False
            return done
        if self._decoder is not None and (self._ending or self._budget <= 0):
            return BUSY  # this read's decoding budget is spent: go on in a later callback
        limits = self._limits
        if not self._headers_done:
            # However the head arrives (one 100 KB line in one segment or many small
            # reads), llhttp buffers at most the cap plus one read of it.
            if self._head_fed > limits.max_head_size:
                raise TooLarge("the response head", limits.max_head_size, "max_head_size")
        elif headers_done and self._raw == raw_before:
            # Reads that add no body byte (chunk extensions, trailers) are bounded too.
            self._stall += size
            if self._stall > limits.max_head_size:
                raise TooLarge("chunk framing or trailers", limits.max_head_size, "max_head_size")
        else:
            self._stall = 0
        return None

    def pump(self) -> Exchange | Busy | None:
        """Decode a bounded amount more: like :meth:`feed`, without new bytes."""
        decoder = self._decoder
        assert decoder is not None
        steps = _STEPS
        more = True
        while steps > 0:
            steps -= 1
            if not self._step(decoder):
                more = False
                break
        if more:
            return BUSY
        if self._ending:
            done = self._done = self._complete(self._keep_alive and not self._leftover)
            return done
        return None

    def _step(self, decoder: Decoder) -> bool:
        try:
            return decoder.step(self._body)
        except (BadResponse, TooLarge):
            raise
        except Exception as exc:  # zlib.error, brotli.error: the coding is broken
            raise _undecodable(exc) from None

    def eof(self, exc: BaseException | None) -> Exchange:
        """The peer closed (``exc`` None) or reset (``exc`` set) the connection.

        Returns the response when its body runs until the close and the close was clean;
        raises :class:`BadResponse` for a response cut short, and
        :class:`ConnectionResetError` when not a byte of the response arrived (a stale
        keep-alive connection, which a caller may resend an idempotent request on).
        """
        if self._done is not None:
            return self._done
        if self._ending or (
            self._headers_done and not self._framed and exc is None and not self._interim
        ):
            # Reading is paused while decoding works, so a close here comes after it;
            # whatever is left is bounded by max_body_size.
            decoder = self._decoder
            while decoder is not None and self._step(decoder):
                pass
            return self._complete(False)
        if not self.fed:
            reason = f": {exc}" if exc is not None else ""
            raise ConnectionResetError(f"the server closed the connection{reason}")
        if exc is not None:
            raise BadResponse(f"the connection was reset before the response ended ({exc})")
        raise BadResponse("the server closed the connection before the response ended")

    # -- llhttp callbacks -----------------------------------------------------------------

    def _fail(self, error: BadResponse | TooLarge) -> BadResponse | TooLarge:
        self._error = error
        return error

    def on_message_begin(self) -> None:
        if self._done is not None or self._ending:  # a second response nobody asked for
            self._leftover = True
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self._head_bytes += len(status)  # checked with the fields, at the end of the head

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept lean (it runs for every field of every response): the limits are checked
        # once per head in on_headers_complete, and until then llhttp holds at most the
        # cap plus one read (see feed).
        headers = self._headers
        headers.append(name)
        headers.append(value)
        size = len(name)
        if size == 14:
            if name.lower() == b"content-length":  # llhttp checked: digits, one value
                self._framed = True
                self._length = int(value)
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    # llhttp would read such a body until the close; a client that asked
                    # for no transfer coding cannot tell where it really ends.
                    raise self._fail(BadResponse(f"unsupported Transfer-Encoding {value[:40]!r}"))
                self._framed = True
        elif size == 16 and name.lower() == b"content-encoding":
            self._encoding = value.strip().lower()

    def _check_fields(self, fields: list[bytes], what: str) -> None:
        """Hold ``fields`` (flat name/value pairs) and the head so far to the limits."""
        limits = self._limits
        if len(fields) > 2 * limits.max_header_count:
            raise self._fail(TooLarge(what, limits.max_header_count, "max_header_count"))
        # 15 for "HTTP/1.1 200 " and its CRLF, 4 per field for ": " and CRLF.
        self._head_bytes += sum(map(len, fields)) + 2 * len(fields) + 15
        if self._head_bytes > limits.max_head_size:
            raise self._fail(TooLarge("the response head", limits.max_head_size, "max_head_size"))

    def on_headers_complete(self) -> None:
        p = self._p
        status = p.get_status_code()
        if status == 101:
            raise self._fail(BadResponse("unsolicited 101 Switching Protocols"))
        if status < 200:  # an interim 1xx: llhttp completes it; the real response follows
            self._interim = True
            self._interims += 1
            return
        if p.get_http_version() not in ("1.1", "1.0"):
            raise self._fail(BadResponse(f"unsupported HTTP version {p.get_http_version()}"))
        headers = self._headers
        self._check_fields(headers, "header fields")
        self._head = tuple(headers)
        self._headers = []  # chunked trailers, if any, go here
        self._status = status
        self._headers_done = True
        self._keep_alive = p.should_keep_alive()
        if self._head_only:
            self._done = Exchange(status, self._head, b"", self._head_ends_reads())
            raise _Stop
        if status == 204 or status == 304:
            return  # no body, whatever Content-Length says (a 304 repeats the resource's)
        limit = self._limits.max_body_size
        if self._length > limit:  # the raw body alone would pass the cap
            raise self._fail(body_too_large(limit))
        if self._encoding is not None:
            self._decoder = make_decoder(self._encoding, limit)

    def _head_ends_reads(self) -> bool:
        """HEAD: True if the response head ends exactly where the reads so far end.

        llhttp cannot be told a HEAD response has no body, so it is stopped here; the
        connection is reused (with a fresh parser) only when no byte follows the head.
        llhttp accepted only CRLF line ends, so each head ends at its first CRLFCRLF.
        """
        seen = b"".join(self._head_seen)
        end = -4
        for _ in range(self._interims + 1):
            end = seen.find(b"\r\n\r\n", end + 4)
            if end < 0:
                return False
        if end + 4 != len(seen) or not self._keep_alive:
            return False
        self._p = httptools.HttpResponseParser(self)  # the old one waits for a body
        return True

    def on_body(self, body: bytes) -> None:
        self._raw += len(body)
        limit = self._limits.max_body_size
        if self._raw > limit:
            raise self._fail(body_too_large(limit))
        decoder = self._decoder
        if decoder is None:
            self._body.append(body)
            return
        decoder.push(body)
        # Decode as it comes, a few steps per read; a bomb's excess waits for pump().
        try:
            while self._budget > 0:
                self._budget -= 1
                if not self._step(decoder):
                    break
        except (BadResponse, TooLarge) as exc:
            raise self._fail(exc) from None

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_head()
            return
        if self._headers:  # trailers: counted and sized with the head, never kept
            self._check_fields(self._headers, "trailer fields")
            self._headers = []
        if self._decoder is not None and self._budget <= 0:
            self._ending = True  # pump() finishes the decoding, then the response
            return
        try:
            self._done = self._complete(self._keep_alive)
        except (BadResponse, TooLarge) as exc:
            raise self._fail(exc) from None

    def _complete(self, reusable: bool) -> Exchange:
        decoder = self._decoder
        if decoder is not None and self._raw:  # an empty body is empty whatever its coding
            while self._step(decoder):  # only left over when within this read's budget
                pass
            decoder.finish()
        body = self._body
        content = body[0] if len(body) == 1 else b"".join(body)
        return Exchange(self._status, self._head, content, reusable)


def _undecodable(exc: BaseException) -> BadResponse:
    return BadResponse(
        f"the body does not decode as its Content-Encoding says ({type(exc).__name__}: {exc})"
    )


def _reason(exc: httptools.HttpParserError) -> str:
    text = str(exc) or type(exc).__name__
    return f"malformed response: {text}"
