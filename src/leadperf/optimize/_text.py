"""Text compression: one-shot brotli/gzip/deflate, Accept-Encoding negotiation, and the
per-connection streaming pair for WebSocket messages."""

from __future__ import annotations

import threading
import zlib
from typing import Any, ClassVar

import brotli

from .._core.lifecycle import SyncResource
from .._core.validate import positive_int
from ..errors import CompressionError, ConfigError

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_MAX_OUTPUT",
    "StreamCompressor",
    "StreamDecompressor",
    "as_bytes",
    "compress",
    "decompress",
    "negotiate_encoding",
    "normalize_algorithm",
]

#: Compression levels used when none is given: brotli 5 and gzip/deflate 6 are the usual
#: trade-off for responses compressed on the fly (brotli 11 is for static assets).
DEFAULT_LEVELS: dict[str, int] = {"br": 5, "gzip": 6, "deflate": 6, "identity": 0}
_LEVEL_RANGES: dict[str, tuple[int, int]] = {
    "br": (0, 11),
    "gzip": (0, 9),
    "deflate": (0, 9),
    "identity": (0, 0),
}
_ALIASES: dict[str, str] = {
    "br": "br",
    "brotli": "br",
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
    "zlib": "deflate",
    "identity": "identity",
    "none": "identity",
}
# zlib wbits: 31 = gzip container, 15 = zlib container (HTTP "deflate"), -15 = raw deflate.
_WBITS = {"gzip": 31, "deflate": 15}
#: Decompressed output above this many bytes is refused (a compression bomb), 256 MiB.
DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024
# Server preference when the client weighs several encodings equally.
_PREFERENCE = ("br", "gzip", "deflate", "identity")
# RFC 7692: a sync-flushed deflate block ends with these 4 bytes; WebSocket frames drop them.
_SYNC_TAIL = b"\x00\x00\xff\xff"


def normalize_algorithm(
    algorithm: str, *, allowed: tuple[str, ...] = _PREFERENCE, key: str = "algorithm"
) -> str:
    """Canonical name (``br``, ``gzip``, ``deflate``, ``identity``) or :class:`ConfigError`."""
    name = _ALIASES.get(algorithm.lower().strip()) if isinstance(algorithm, str) else None
    if name is None or name not in allowed:
        raise ConfigError(
            f"{key}: unsupported compression algorithm {algorithm!r}; use one of "
            f"{', '.join(allowed)}",
            key=key,
        )
    return name


def check_level(algorithm: str, level: int | None, *, key: str = "level") -> int:
    """``level`` validated for ``algorithm`` (None -> its default)."""
    if level is None:
        return DEFAULT_LEVELS[algorithm]
    low, high = _LEVEL_RANGES[algorithm]
    if not isinstance(level, int) or isinstance(level, bool) or not low <= level <= high:
        raise ConfigError(
            f"{key}: {algorithm} level must be an integer {low}..{high}, got {level!r}", key=key
        )
    return level


def as_bytes(data: str | bytes | bytearray | memoryview, what: str = "data") -> bytes:
    """``data`` as bytes (str as UTF-8); ConfigError naming ``what`` for anything else."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise ConfigError(f"{what}: expected str or bytes, got {type(data).__name__}", key=what)


# -- one-shot --------------------------------------------------------------------------------


def compress(data: bytes, algorithm: str, level: int) -> bytes:
    """Compress ``data`` whole with a canonical ``algorithm`` at a checked ``level``."""
    if algorithm == "br":
        # Text mode tunes brotli's context modelling for UTF-8.
        return bytes(brotli.compress(data, mode=brotli.MODE_TEXT, quality=level))
    if algorithm == "identity":
        return data
    # zlib with a gzip container instead of the gzip module: no mtime, so output is stable.
    comp = zlib.compressobj(level, zlib.DEFLATED, _WBITS[algorithm])
    return comp.compress(data) + comp.flush()


def decompress(data: bytes, algorithm: str, max_output: int) -> bytes:
    """Decompress a complete ``data`` buffer, refusing more than ``max_output`` bytes."""
    if algorithm == "identity":
        if len(data) > max_output:
            raise _too_large(max_output)
        return data
    if not data:
        raise CompressionError(f"no {algorithm} data to decompress (0 bytes)")
    if algorithm == "br":
        dec = brotli.Decompressor()
        try:
            out = bytes(dec.process(data, output_buffer_limit=max_output + 1))
        except brotli.error as exc:
            raise CompressionError(f"corrupt brotli data: {exc}") from exc
        if len(out) > max_output:
            raise _too_large(max_output)
        if not dec.is_finished():
            raise CompressionError(
                "truncated brotli data: the stream ended early; was the whole body received?"
            )
        return out
    zdec = zlib.decompressobj(_WBITS[algorithm])
    try:
        out = zdec.decompress(data, max_output + 1)
    except zlib.error as exc:
        raise CompressionError(f"corrupt {algorithm} data: {exc}") from exc
    if len(out) > max_output:
        raise _too_large(max_output)
    if not zdec.eof:
        raise CompressionError(
            f"truncated {algorithm} data: the stream ended early; was the whole body received?"
        )
    return out


def _too_large(limit: int) -> CompressionError:
    return CompressionError(
        f"decompressed data exceeds max_output={limit} bytes (a compression bomb?); "
        "raise max_output if the data is trusted"
    )


# -- Accept-Encoding ---------------------------------------------------------------------------


def negotiate_encoding(
    accept_encoding: str | None, *, available: tuple[str, ...] = _PREFERENCE
) -> str:
    """The best content coding for an ``Accept-Encoding`` header (RFC 9110 section 12.5.3).

    The client's q-values decide; ties go to the server's preference (br, gzip, deflate,
    identity). ``*`` covers codings not named. Returns ``"identity"`` when nothing else is
    acceptable (including a missing or empty header).
    """
    if not accept_encoding:
        return "identity"
    weights: dict[str, float] = {}
    star: float | None = None
    for item in accept_encoding.split(","):
        token, _, params = item.strip().partition(";")
        token = token.strip().lower()
        if not token:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # an unreadable weight must not select a coding
        if token == "*":
            star = q
        elif token in _ALIASES:
            name = _ALIASES[token]
            weights[name] = max(weights.get(name, 0.0), q)
    best, best_q = "identity", -1.0
    for coding in available:
        weight = weights.get(coding)
        if weight is None:
            # Unnamed identity stays acceptable (unless "*;q=0") but only as the fallback:
            # a client that lists any coding wants it over an uncompressed body.
            weight = star if star is not None else (0.001 if coding == "identity" else 0.0)
        if weight > 0 and weight > best_q:
            best, best_q = coding, weight
    return best


# -- streaming ---------------------------------------------------------------------------------


class _StreamBase(SyncResource):
    _kind = "stream"
    _closed_hint: ClassVar[str] = "create one per connection"

    def __init__(self, algorithm: str) -> None:
        self.algorithm = normalize_algorithm(algorithm, allowed=("br", "deflate"))
        self._lock = threading.Lock()
        self._mark_open()  # the compression state exists from construction
        self.messages = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def close(self) -> None:
        """Drop the compression state; idempotent. Later calls raise :class:`ClosedError`."""
        super().close()

    def _close(self) -> None:
        with self._lock:  # after a message being compressed right now
            self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = self._state.value
        return (
            f"<{type(self).__name__} {self.algorithm} {state} messages={self.messages} "
            f"in={self.bytes_in} out={self.bytes_out}>"
        )


class StreamCompressor(_StreamBase):
    """Compress the messages of one connection, each flushed into a complete frame.

    One object per connection: the window is shared across messages (context takeover), so
    later messages that repeat earlier ones compress far better than one-shot compression.
    ``algorithm="deflate"`` (default) emits raw deflate frames without the sync-flush tail,
    as RFC 7692 permessage-deflate WebSocket frames; ``"br"`` emits brotli-flushed chunks.
    Decode with a :class:`StreamDecompressor` of the same algorithm. Not for sharing
    between connections; a lock keeps one object safe across threads.
    """

    def __init__(self, algorithm: str = "deflate", level: int | None = None) -> None:
        super().__init__(algorithm)
        self.level = check_level(self.algorithm, level)
        self._br: Any = None
        self._z: Any = None
        if self.algorithm == "br":
            self._br = brotli.Compressor(mode=brotli.MODE_TEXT, quality=self.level)
        else:
            self._z = zlib.compressobj(self.level, zlib.DEFLATED, -15)

    def compress(self, message: str | bytes) -> bytes:
        """Compress one message and flush: the returned frame decodes on its own (in order)."""
        data = as_bytes(message, "message")
        with self._lock:
            self._check_open()
            if self._br is not None:
                frame = bytes(self._br.process(data)) + bytes(self._br.flush())
            else:
                frame = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
                frame = frame.removesuffix(_SYNC_TAIL)
            self.messages += 1
            self.bytes_in += len(data)
            self.bytes_out += len(frame)
            return frame

    def _release(self) -> None:
        self._br = self._z = None


class StreamDecompressor(_StreamBase):
    """Decode the frames of one connection made by a :class:`StreamCompressor`, in order.

    ``max_message_size`` (bytes, default 64 MiB) bounds each decoded message; a frame that
    would decode past it raises :class:`CompressionError` and the connection should close.
    """

    def __init__(
        self, algorithm: str = "deflate", max_message_size: int = 64 * 1024 * 1024
    ) -> None:
        super().__init__(algorithm)
        positive_int(max_message_size, "max_message_size")
        self.max_message_size = max_message_size
        self._br: Any = brotli.Decompressor() if self.algorithm == "br" else None
        self._z: Any = zlib.decompressobj(-15) if self.algorithm == "deflate" else None

    def decompress(self, frame: bytes) -> bytes:
        """Decode one frame into the message it carries."""
        data = as_bytes(frame, "frame")
        limit = self.max_message_size
        with self._lock:
            self._check_open()
            try:
                if self._br is not None:
                    out = bytes(self._br.process(data, output_buffer_limit=limit + 1))
                else:
                    out = self._z.decompress(data + _SYNC_TAIL, limit + 1)
            except (brotli.error, zlib.error) as exc:
                raise CompressionError(
                    f"corrupt {self.algorithm} frame #{self.messages + 1}: {exc}; frames must "
                    "arrive in order from one StreamCompressor"
                ) from exc
            if len(out) > limit:
                raise CompressionError(
                    f"frame #{self.messages + 1} decodes past max_message_size={limit} bytes"
                )
            self.messages += 1
            self.bytes_in += len(data)
            self.bytes_out += len(out)
            return out

    def decompress_text(self, frame: bytes, encoding: str = "utf-8") -> str:
        """:meth:`decompress` and decode to ``str``."""
        return self.decompress(frame).decode(encoding)

    def _release(self) -> None:
        self._br = self._z = None
