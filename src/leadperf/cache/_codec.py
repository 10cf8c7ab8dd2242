"""The one codec every cache backend stores values with.

Stored form: one header byte, then the payload. The header records how the payload was
made, so entries written under one setting stay readable under any other::

    header = (compression << 4) | format

    format       1 bytes (stored as is)   2 str (UTF-8)   3 JSON   4 msgpack   5 pickle
    compression  0 none   1 gzip   2 brotli

``bytes`` and ``str`` values skip the serializer entirely (fast and compact). Other
values go through msgpack (the default when installed; ``bytes`` nested in containers
round-trip natively) or JSON (nested ``bytes`` are tagged as ``{"__bytes__": base64}``).
Pickle is never used unless the codec is built with ``serializer="pickle"`` (to write)
or ``allow_pickle=True`` (to read): unpickling data from a shared server would let anyone
who can write to that server run code in this process.
"""

from __future__ import annotations

import base64
import importlib
import json
import pickle
import zlib
from typing import TYPE_CHECKING, Any, Final

from .._util import require
from ..errors import ConfigError, SerializationError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Codec"]

FMT_BYTES: Final = 1
FMT_STR: Final = 2
FMT_JSON: Final = 3
FMT_MSGPACK: Final = 4
FMT_PICKLE: Final = 5

COMP_NONE: Final = 0
COMP_GZIP: Final = 1
COMP_BROTLI: Final = 2

_SERIALIZERS = {"msgpack": FMT_MSGPACK, "json": FMT_JSON, "pickle": FMT_PICKLE}
_COMPRESSIONS = {"none": COMP_NONE, "gzip": COMP_GZIP, "br": COMP_BROTLI}
_FORMAT_NAMES = {FMT_BYTES: "bytes", FMT_STR: "str", FMT_JSON: "json", FMT_MSGPACK: "msgpack"}
_FORMAT_NAMES[FMT_PICKLE] = "pickle"
_BYTES_TAG = "__bytes__"


def _msgpack_available() -> bool:
    try:
        importlib.import_module("msgpack")
    except ImportError:
        return False
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj


class Codec:
    """Encode values to bytes with a header byte; decode anything any codec setting wrote.

    ``serializer``: ``"msgpack"`` (default when msgpack is installed, else ``"json"``),
    ``"json"`` or ``"pickle"`` (explicit opt-in). ``compression``: ``"br"`` (default),
    ``"gzip"`` or ``"none"``, applied when the payload is at least ``threshold`` bytes
    (default 1024) and only kept when it makes the entry smaller. ``level`` is the
    brotli quality (default 4) or gzip level (default 6). ``allow_pickle`` lets this
    codec *read* pickle entries without writing them. Bad arguments raise ConfigError.
    """

    __slots__ = (
        "_allow_pickle",
        "_comp",
        "_fmt",
        "_level",
        "_msgpack",
        "compression",
        "serializer",
        "threshold",
    )

    def __init__(
        self,
        *,
        serializer: str | None = None,
        compression: str = "br",
        threshold: int = 1024,
        level: int | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if serializer is None:
            serializer = "msgpack" if _msgpack_available() else "json"
        if serializer not in _SERIALIZERS:
            raise ConfigError(
                f"serializer: must be one of {', '.join(_SERIALIZERS)}, got {serializer!r}",
                key="serializer",
            )
        if compression not in _COMPRESSIONS:
            raise ConfigError(
                f"compression: must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}",
                key="compression",
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(
                f"threshold: must be an integer >= 0 (bytes), got {threshold!r}", key="threshold"
            )
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            raise ConfigError(f"level: must be an integer, got {level!r}", key="level")
        self.serializer = serializer
        self.compression = compression
        self.threshold = threshold
        self._fmt = _SERIALIZERS[serializer]
        self._comp = _COMPRESSIONS[compression]
        self._level = level
        self._allow_pickle = allow_pickle or serializer == "pickle"
        self._msgpack: Any = (
            require("msgpack", "all", "msgpack") if serializer == "msgpack" else None
        )
        if self._comp == COMP_BROTLI:
            _brotli()

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """Build the codec ``settings.cache`` describes (compression and threshold)."""
        return cls(
            compression=settings.cache.compression,
            threshold=settings.cache.compression_threshold,
        )

    def __repr__(self) -> str:
        return (
            f"Codec(serializer={self.serializer!r}, compression={self.compression!r}, "
            f"threshold={self.threshold})"
        )

    # -- encoding -------------------------------------------------------------------------

    def serialize(self, value: Any) -> tuple[int, bytes]:
        """Return ``(format, payload)`` for ``value`` without compressing it.

        Raises SerializationError for a value the serializer cannot represent.
        """
        if type(value) is bytes:
            return FMT_BYTES, value
        if type(value) is str:
            return FMT_STR, value.encode("utf-8", "surrogatepass")
        fmt = self._fmt
        try:
            if fmt == FMT_MSGPACK:
                return fmt, self._msgpack.packb(value, use_bin_type=True)
            if fmt == FMT_JSON:
                text = json.dumps(
                    value,
                    default=_json_default,
                    ensure_ascii=False,
                    separators=(",", ":"),
                    allow_nan=False,
                )
                return fmt, text.encode("utf-8")
            return fmt, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (TypeError, ValueError, OverflowError, pickle.PicklingError, AttributeError) as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__name__} with the "
                f"{self.serializer} serializer ({exc}); store bytes, str, numbers, bools, None, "
                "or lists/dicts of those, or opt in to pickle with Codec(serializer='pickle')"
            ) from exc

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` to header byte + payload, compressed above the threshold."""
        fmt, payload = self.serialize(value)
        comp = self._comp
        if comp and len(payload) >= self.threshold:
            packed = self._compress(payload)
            if len(packed) < len(payload):
                return bytes(((comp << 4) | fmt,)) + packed
        return bytes((fmt,)) + payload

    def _compress(self, payload: bytes) -> bytes:
        if self._comp == COMP_GZIP:
            return zlib.compress(payload, 6 if self._level is None else self._level, wbits=31)
        quality = 4 if self._level is None else self._level
        packed: bytes = _brotli().compress(payload, quality=quality)
        return packed

    # -- decoding -------------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        """Decode what any codec setting wrote; raise SerializationError for foreign data."""
        if not data:
            raise SerializationError("stored entry is empty; it was not written by leadperf")
        header = data[0]
        fmt = header & 0x0F
        comp = header >> 4
        payload = data[1:]
        if comp:
            payload = _decompress(comp, payload)
        if fmt == FMT_BYTES:
            return payload
        try:
            if fmt == FMT_STR:
                return payload.decode("utf-8", "surrogatepass")
            if fmt == FMT_MSGPACK:
                mp = self._msgpack or require("msgpack", "all", "msgpack")
                return mp.unpackb(payload, raw=False, strict_map_key=False)
            if fmt == FMT_JSON:
                return json.loads(payload, object_hook=_json_hook)
            if fmt == FMT_PICKLE:
                if not self._allow_pickle:
                    raise SerializationError(
                        "stored entry was written with pickle, which this cache does not read; "
                        "build the cache with Codec(allow_pickle=True) if you trust every writer"
                    )
                return pickle.loads(payload)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"stored {_FORMAT_NAMES[fmt]} entry is corrupt ({exc}); delete the key"
            ) from exc
        raise SerializationError(
            f"stored entry has unknown header byte 0x{header:02x}; it was not written by "
            "leadperf (or by a newer version): delete the key or upgrade"
        )

    @staticmethod
    def is_encoded(data: bytes) -> bool:
        """True when ``data`` starts with a header byte this version understands."""
        if not data:
            return False
        fmt, comp = data[0] & 0x0F, data[0] >> 4
        return FMT_BYTES <= fmt <= FMT_PICKLE and comp <= COMP_BROTLI


def _decompress(comp: int, payload: bytes) -> bytes:
    try:
        if comp == COMP_GZIP:
            return zlib.decompress(payload, wbits=47)
        if comp == COMP_BROTLI:
            out: bytes = _brotli().decompress(payload)
            return out
    except Exception as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(
            f"stored entry fails to decompress ({exc}); delete the key"
        ) from exc
    raise SerializationError(
        f"stored entry has unknown compression {comp}; it was not written by leadperf "
        "(or by a newer version): delete the key or upgrade"
    )


_brotli_module: Any = None


def _brotli() -> Any:
    global _brotli_module
    if _brotli_module is None:
        _brotli_module = require("brotli", "all", "brotli")
    return _brotli_module
