"""Incremental ``Content-Encoding`` decoders that stop at the decoded-size limit.

Encoded bytes are queued with ``push``; each ``step`` decodes about :data:`STEP` bytes at
most, so a compression bomb (a 1.6 KB brotli body that inflates to 1 GiB) stops at the
cap after decoding at most the cap plus one step, and the connection spreads the work
over event-loop callbacks (the loop, and the request's deadline timer, run in between).
gzip bodies of several members (what ``cat a.gz b.gz`` makes, and some servers send)
decode whole, as ``gzip -d`` does.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Protocol

import brotli

__all__ = [
    "ACCEPT_ENCODING",
    "BadResponse",
    "Decoder",
    "TooLarge",
    "body_too_large",
    "make_decoder",
]

ACCEPT_ENCODING = "gzip, deflate, br"
_GZIP_MAGIC = b"\x1f\x8b"
STEP = 256 * 1024  # decoded bytes per step at most (about: brotli may pass it by half)


class BadResponse(Exception):
    """The response broke HTTP/1.1 or its own framing; the connection is dropped."""


class TooLarge(Exception):
    """The response passed one of the engine's :class:`Limits`."""

    def __init__(self, what: str, limit: int, setting: str) -> None:
        super().__init__(f"{what} is over the limit of {limit}")
        self.what = what
        self.limit = limit
        self.setting = setting


def body_too_large(limit: int) -> TooLarge:
    """The error for a (decoded) body larger than ``max_body_size``."""
    return TooLarge("the decoded body", limit, "max_body_size")


class Decoder(Protocol):
    """Turns encoded body pieces into decoded ones, at most ``limit`` bytes in all.

    :meth:`push` only queues; :meth:`step` decodes about :data:`STEP` bytes at most, so
    the caller decides how much work one event-loop callback does.
    """

    def push(self, data: bytes) -> None:
        """Queue encoded bytes."""
        ...

    def step(self, out: list[bytes]) -> bool:
        """Decode a bounded amount into ``out``; True while work remains."""
        ...

    def finish(self) -> None:
        """Raise :class:`BadResponse` if the encoded stream was cut short."""
        ...


class _Zlib:
    """gzip (every member) or deflate (zlib-wrapped or raw, told apart by the header)."""

    __slots__ = ("_d", "_full", "_gzip", "_ignore", "_input", "_limit", "_pending", "_room")

    def __init__(self, gzip: bool, limit: int) -> None:
        self._gzip = gzip
        self._limit = self._room = limit
        self._ignore = False  # bytes after the last gzip member that are not a member
        self._pending = b""  # deflate: the first byte, until the second tells the format
        self._input: deque[bytes] = deque()
        self._full = False  # the last step filled its output: zlib may hold more
        self._d = zlib.decompressobj(wbits=31) if gzip else None

    def push(self, data: bytes) -> None:
        if data and not self._ignore:
            self._input.append(data)

    def _start(self) -> zlib._Decompress | None:
        # deflate: RFC 9110 says zlib-wrapped; some servers send it raw.
        data = self._pending + self._input.popleft()
        if len(data) < 2:
            self._pending = data
            return None
        self._pending = b""
        self._input.appendleft(data)
        first, second = data[0], data[1]
        wrapped = first & 0x0F == 8 and ((first << 8) | second) % 31 == 0
        d = self._d = zlib.decompressobj(wbits=15 if wrapped else -15)
        return d

    def step(self, out: list[bytes]) -> bool:
        d = self._d
        if d is None:
            if not self._input:
                return False
            d = self._start()
            if d is None:
                return bool(self._input)
        if self._ignore:
            self._input.clear()
            return False
        if self._input:
            data = self._input.popleft()
        elif self._full:
            data = b""
        else:
            return False
        # max_length caps the output of this one call: one byte over the room is enough
        # to know the limit is passed, and a bomb never inflates further than a step.
        size = min(self._room + 1, STEP)
        chunk = d.decompress(data, size)
        self._full = len(chunk) == size
        if chunk:
            if len(chunk) > self._room:
                raise body_too_large(self._limit)
            self._room -= len(chunk)
            out.append(chunk)
        if not d.eof:
            if d.unconsumed_tail:
                self._input.appendleft(d.unconsumed_tail)
        else:
            self._full = False
            rest = d.unused_data
            if rest:
                if self._gzip and (rest.startswith(_GZIP_MAGIC) or rest == _GZIP_MAGIC[:1]):
                    self._d = zlib.decompressobj(wbits=31)  # the next member
                    self._input.appendleft(rest)
                else:
                    self._ignore = True  # trailing garbage: ignored, as gzip -d does
                    self._input.clear()
        return bool(self._input) or self._full

    def finish(self) -> None:
        d = self._d
        if self._pending or (d is not None and not d.eof and not self._ignore):
            raise BadResponse("the compressed body ends before its compressed stream does")


class _Brotli:
    """brotli through its incremental decompressor, with the output buffer capped."""

    __slots__ = ("_d", "_full", "_input", "_limit", "_room")

    def __init__(self, limit: int) -> None:
        self._d = brotli.Decompressor()
        self._limit = self._room = limit
        self._input: deque[bytes] = deque()
        self._full = False  # the last step filled its output: brotli may hold more

    def push(self, data: bytes) -> None:
        if data:
            self._input.append(data)

    def step(self, out: list[bytes]) -> bool:
        d = self._d
        # brotli may pass its output limit by half; after a capped step it wants empty
        # input until it has drained itself (can_accept_more_data() alone does not say
        # whether output is still pending, so a full step means "call again").
        size = min(self._room + 1, STEP)
        if self._full or not d.can_accept_more_data():
            data = b""
        elif self._input:
            if d.is_finished():
                raise BadResponse("bytes after the end of the brotli stream")
            data = self._input.popleft()
        else:
            return False
        chunk = d.process(data, output_buffer_limit=size)
        self._full = len(chunk) >= size and not d.is_finished()
        if chunk:
            if len(chunk) > self._room:
                raise body_too_large(self._limit)
            self._room -= len(chunk)
            out.append(chunk)
        return bool(self._input) or self._full or not d.can_accept_more_data()

    def finish(self) -> None:
        if not self._d.is_finished():
            raise BadResponse("the compressed body ends before its compressed stream does")


def make_decoder(coding: bytes, limit: int) -> Decoder | None:
    """The decoder for one ``Content-Encoding`` value, or None to keep the body as sent.

    Codings we never ask for (``zstd``, stacked codings) are handed over undecoded, as
    before: the caller sees the ``Content-Encoding`` header and the raw body.
    """
    if coding in (b"gzip", b"x-gzip"):
        return _Zlib(True, limit)
    if coding == b"deflate":
        return _Zlib(False, limit)
    if coding == b"br":
        return _Brotli(limit)
    return None
