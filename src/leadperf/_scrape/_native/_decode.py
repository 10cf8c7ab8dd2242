"""Incremental ``Content-Encoding`` decoders that stop at the decoded-size limit.

Each decoder is fed the body as it arrives and never produces more than ``limit + 1``
bytes in one step, so a compression bomb (a 1.6 KB brotli body that inflates to 1 GiB)
stops at the cap after decoding at most the cap, on the connection's own read callback,
while the request's deadline still runs. gzip bodies of several members (what
``cat a.gz b.gz`` makes, and some servers send) decode whole, as ``gzip -d`` does.
"""

from __future__ import annotations

import zlib
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
_STEP = 1 << 20


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
    """Turns encoded body pieces into decoded ones, at most ``limit`` bytes in all."""

    def feed(self, data: bytes, out: list[bytes]) -> int:
        """Decode ``data``, append the output to ``out``; return the bytes appended."""
        ...

    def finish(self) -> None:
        """Raise :class:`BadResponse` if the encoded stream was cut short."""
        ...


class _Zlib:
    """gzip (every member) or deflate (zlib-wrapped or raw, told apart by the header)."""

    __slots__ = ("_d", "_gzip", "_ignore", "_limit", "_pending", "_room")

    def __init__(self, gzip: bool, limit: int) -> None:
        self._gzip = gzip
        self._limit = self._room = limit
        self._ignore = False  # bytes after the last gzip member that are not a member
        self._pending = b""  # deflate: the first byte, until the second tells the format
        self._d = zlib.decompressobj(wbits=31) if gzip else None

    def feed(self, data: bytes, out: list[bytes]) -> int:
        if self._ignore or not data:
            return 0
        d = self._d
        if d is None:  # deflate: RFC 9110 says zlib-wrapped; some servers send it raw
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return 0
            self._pending = b""
            first, second = data[0], data[1]
            wrapped = first & 0x0F == 8 and ((first << 8) | second) % 31 == 0
            d = self._d = zlib.decompressobj(wbits=15 if wrapped else -15)
        produced = 0
        while data:
            # max_length caps the output of this one call: one byte over the room is enough
            # to know the limit is passed, and a bomb never inflates further than that.
            chunk = d.decompress(data, self._room + 1)
            if chunk:
                if len(chunk) > self._room:
                    raise body_too_large(self._limit)
                self._room -= len(chunk)
                produced += len(chunk)
                out.append(chunk)
            if not d.eof:
                data = d.unconsumed_tail
                continue
            data = d.unused_data
            if not data:
                break
            if self._gzip and (data.startswith(_GZIP_MAGIC) or data == _GZIP_MAGIC[:1]):
                d = self._d = zlib.decompressobj(wbits=31)  # the next member
                continue
            self._ignore = True  # trailing garbage: ignored, as gzip -d does
            break
        return produced

    def finish(self) -> None:
        d = self._d
        if self._pending or (d is not None and not d.eof and not self._ignore):
            raise BadResponse("the compressed body ends before its compressed stream does")


class _Brotli:
    """brotli through its incremental decompressor, with the output buffer capped."""

    __slots__ = ("_d", "_limit", "_room")

    def __init__(self, limit: int) -> None:
        self._d = brotli.Decompressor()
        self._limit = self._room = limit

    def feed(self, data: bytes, out: list[bytes]) -> int:
        d = self._d
        produced = 0
        first = True
        while first or not d.can_accept_more_data():
            # Steps of at most about 1 MiB (brotli may pass its output limit by half): the
            # cap is passed by little, and after a capped step brotli wants empty input
            # until it has drained itself.
            step = min(self._room + 1, _STEP)
            chunk = d.process(data if first else b"", output_buffer_limit=step)
            first = False
            if chunk:
                if len(chunk) > self._room:
                    raise body_too_large(self._limit)
                self._room -= len(chunk)
                produced += len(chunk)
                out.append(chunk)
            if d.is_finished():
                break
        return produced

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
