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
or ``allow_pickle=True`` (to read), and then only with a sign key: unpickling data from a
shared server would let anyone who can write to that server run code in this process.

Signed entries (``sign_key=``): the header's high bit is set and a 32-byte HMAC-SHA256 tag
follows it, computed over the header byte, the stored key and the payload. A codec with
sign keys reads only entries whose tag one of its keys verifies; the algorithm is fixed by
the reader, never read from the entry. Decoding is bounded: a payload that would decode to
more than ``max_decoded_size`` bytes is refused after at most that much output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import pickle
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._core.validate import non_negative_int, positive_int
from .._util import require
from ..errors import ConfigError, SerializationError, ValueTooLargeError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Codec", "ValueTooLargeError"]

FMT_BYTES: Final = 1
FMT_STR: Final = 2
FMT_JSON: Final = 3
FMT_MSGPACK: Final = 4
FMT_PICKLE: Final = 5

COMP_NONE: Final = 0
COMP_GZIP: Final = 1
COMP_BROTLI: Final = 2

#: Header bit marking a signed entry: a 32-byte HMAC-SHA256 tag follows the header.
SIGNED: Final = 0x80
TAG_SIZE: Final = 32
#: Shortest sign key accepted (bytes); HMAC keys shorter than this are guessable.
MIN_SIGN_KEY_BYTES: Final = 16
#: Default cap on a decoded payload (bytes).
DEFAULT_MAX_DECODED_SIZE: Final = 64 * 1024 * 1024

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
    codec *read* pickle entries without writing them; pickle either way needs a sign key.
    ``sign_key``: a secret (str or bytes, at least 16 bytes) or a list of them; the first
    signs, every one verifies (key rotation). ``max_decoded_size``: largest payload, in
    bytes, this codec writes or decodes (default 64 MiB). Bad arguments raise ConfigError.
    """

    __slots__ = (
        "_allow_pickle",
        "_comp",
        "_fmt",
        "_keys",
        "_level",
        "_msgpack",
        "compression",
        "max_decoded_size",
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
        sign_key: str | bytes | Sequence[str | bytes] | None = None,
        max_decoded_size: int = DEFAULT_MAX_DECODED_SIZE,
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
        non_negative_int(threshold, "threshold")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            raise ConfigError(f"level: must be an integer, got {level!r}", key="level")
        positive_int(max_decoded_size, "max_decoded_size")
        self._keys = _sign_keys(sign_key)
        self._allow_pickle = allow_pickle or serializer == "pickle"
        if self._allow_pickle and not self._keys:
            raise ConfigError(
                "sign_key: pickle needs a sign key, so that only writers holding it can store "
                "what this process unpickles; pass Codec(sign_key=...) or set "
                "LEADPERF_CACHE_SIGN_KEY",
                key="sign_key",
            )
        self.serializer = serializer
        self.compression = compression
        self.threshold = threshold
        self.max_decoded_size = max_decoded_size
        self._fmt = _SERIALIZERS[serializer]
        self._comp = _COMPRESSIONS[compression]
        self._level = level
        self._msgpack: Any = (
            require("msgpack", "all", "msgpack") if serializer == "msgpack" else None
        )
        if self._comp == COMP_BROTLI:
            _brotli()

    @property
    def signed(self) -> bool:
        """True when this codec signs what it writes and reads only signed entries."""
        return bool(self._keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """Build the codec ``settings.cache`` describes (compression, threshold, sign keys).

        Args:
            settings: ``cache.sign_key`` may hold several comma-separated keys: the first signs,
                every one verifies.

        Returns:
            A new :class:`Codec`.

        Raises:
            ConfigError: a setting the codec refuses.
        """
        cs = settings.cache
        raw = cs.sign_key
        keys = [k.strip() for k in raw.split(",") if k.strip()] if raw else None
        return cls(
            compression=cs.compression,
            threshold=cs.compression_threshold,
            sign_key=keys or None,
        )

    def __repr__(self) -> str:
        # The keys themselves are never shown; how many there are is enough to debug with.
        signed = f", sign_keys={len(self._keys)}" if self._keys else ""
        return (
            f"Codec(serializer={self.serializer!r}, compression={self.compression!r}, "
            f"threshold={self.threshold}{signed})"
        )

    # -- encoding -------------------------------------------------------------------------

    def serialize(self, value: Any) -> tuple[int, bytes]:
        """Return ``(format, payload)`` for ``value`` without compressing it.

        Args:
            value: the value to serialize.

        Returns:
            The format byte and the serialized payload.

        Raises:
            SerializationError: a value the serializer cannot represent.
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

    def encode(self, value: Any, key: str = "") -> bytes:
        """Encode ``value`` to header byte (+ tag) + payload, compressed above the threshold.

        Args:
            value: the value to encode.
            key: the stored key; a signing codec binds the tag to it, so an entry copied
                under another key does not verify.

        Returns:
            The stored bytes.

        Raises:
            SerializationError: a value the serializer cannot represent, or one larger than
                ``max_decoded_size`` (:class:`ValueTooLargeError`).
        """
        fmt, payload = self.serialize(value)
        if len(payload) > self.max_decoded_size:
            raise ValueTooLargeError(
                f"value is {len(payload)} bytes serialized, more than this codec's "
                f"max_decoded_size of {self.max_decoded_size}; store less or raise the limit"
            )
        comp = self._comp
        header = fmt
        if comp and len(payload) >= self.threshold:
            packed = self._compress(payload)
            if len(packed) < len(payload):
                header, payload = (comp << 4) | fmt, packed
        if self._keys:
            header |= SIGNED
            head = bytes((header,))
            return head + _tag(self._keys[0], head, key, payload) + payload
        return bytes((header,)) + payload

    def _compress(self, payload: bytes) -> bytes:
        if self._comp == COMP_GZIP:
            return zlib.compress(payload, 6 if self._level is None else self._level, wbits=31)
        quality = 4 if self._level is None else self._level
        packed: bytes = _brotli().compress(payload, quality=quality)
        return packed

    # -- decoding -------------------------------------------------------------------------

    def decode(self, data: bytes, key: str = "") -> Any:
        """Decode what any codec setting wrote under ``key``.

        A signing codec refuses unsigned entries and entries whose tag none of its keys
        verifies; payloads decoding to more than ``max_decoded_size`` are refused.

        Args:
            data: the stored bytes.
            key: the stored key they were written under.

        Returns:
            The value.

        Raises:
            SerializationError: corrupt, truncated, forged, unsigned (when signing) or too large.
        """
        if not data:
            raise SerializationError("stored entry is empty; it was not written by leadperf")
        header = data[0]
        if self._keys:
            payload = self._verified(data, key)
        elif header & SIGNED:
            raise SerializationError(
                "stored entry is signed and this codec has no sign key to verify it; pass "
                "Codec(sign_key=...) or set LEADPERF_CACHE_SIGN_KEY"
            )
        else:
            payload = data[1:]
        fmt = header & 0x0F
        comp = (header & 0x7F) >> 4
        if comp:
            payload = _decompress(comp, payload, self.max_decoded_size)
        elif len(payload) > self.max_decoded_size:
            raise SerializationError(
                f"stored entry is {len(payload)} bytes, more than max_decoded_size "
                f"({self.max_decoded_size}); refused"
            )
        if fmt == FMT_BYTES:
            return payload
        return self._deserialize(fmt, header, payload)

    def _verified(self, data: bytes, key: str) -> bytes:
        """The payload of a signed entry whose tag one of this codec's keys verifies."""
        header = data[0]
        if not header & SIGNED or len(data) < 1 + TAG_SIZE:
            raise SerializationError(
                "stored entry is not signed and this cache reads only signed entries; "
                "something other than this application wrote it: delete the key"
            )
        head, tag, payload = data[:1], data[1 : 1 + TAG_SIZE], data[1 + TAG_SIZE :]
        for secret in self._keys:
            if hmac.compare_digest(tag, _tag(secret, head, key, payload)):
                return payload
        raise SerializationError(
            "stored entry's signature does not verify with any sign key; it was forged, "
            "corrupted, moved from another key or signed with a key no longer accepted"
        )

    def _deserialize(self, fmt: int, header: int, payload: bytes) -> Any:
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
                        "build the cache with Codec(allow_pickle=True, sign_key=...) if every "
                        "writer holds the sign key"
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
        """Whether ``data`` starts with a header byte this version understands.

        Args:
            data: stored bytes.

        Returns:
            True for a leadperf codec header.
        """
        if not data:
            return False
        fmt, comp = data[0] & 0x0F, (data[0] & 0x7F) >> 4
        if data[0] & SIGNED and len(data) < 1 + TAG_SIZE:
            return False
        return FMT_BYTES <= fmt <= FMT_PICKLE and comp <= COMP_BROTLI


def _sign_keys(sign_key: str | bytes | Sequence[str | bytes] | None) -> tuple[bytes, ...]:
    if sign_key is None:
        return ()
    raw: list[Any] = (
        [sign_key]
        if isinstance(sign_key, str | bytes)
        else list(sign_key)
        if isinstance(sign_key, Sequence)
        else [sign_key]
    )
    keys: list[bytes] = []
    for item in raw:
        secret = item.encode("utf-8") if isinstance(item, str) else item
        if not isinstance(secret, bytes) or len(secret) < MIN_SIGN_KEY_BYTES:
            # The value is never echoed: it is a secret, even when it is a bad one.
            raise ConfigError(
                f"sign_key: each key must be a str or bytes of at least {MIN_SIGN_KEY_BYTES} "
                "bytes (e.g. secrets.token_urlsafe(32)); got one that is not",
                key="sign_key",
            )
        keys.append(secret)
    if not keys:
        raise ConfigError("sign_key: the list of keys is empty; pass at least one", key="sign_key")
    return tuple(keys)


def _tag(secret: bytes, head: bytes, key: str, payload: bytes) -> bytes:
    """HMAC-SHA256 over the header byte, the stored key (length-prefixed) and the payload."""
    k = key.encode("utf-8", "surrogatepass")
    prefix = head + len(k).to_bytes(4, "big") + k
    if len(payload) <= 65536:
        return hmac.digest(secret, prefix + payload, "sha256")
    mac = hmac.new(secret, prefix, hashlib.sha256)  # large payloads: no concatenated copy
    mac.update(payload)
    return mac.digest()


def _too_large(limit: int) -> SerializationError:
    return SerializationError(
        f"stored entry decompresses to more than max_decoded_size ({limit} bytes); "
        "refused (a forged entry, or raise the codec's max_decoded_size)"
    )


def _decompress(comp: int, payload: bytes, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes of output, refusing anything that would exceed it."""
    try:
        if comp == COMP_GZIP:
            inflater = zlib.decompressobj(wbits=47)
            out = inflater.decompress(payload, limit + 1)
            if len(out) > limit or inflater.unconsumed_tail:
                raise _too_large(limit)
            if not inflater.eof:
                raise SerializationError("stored gzip entry is truncated; delete the key")
            return out
        if comp == COMP_BROTLI:
            return _unbrotli(payload, limit)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"stored entry fails to decompress ({exc}); delete the key"
        ) from exc
    raise SerializationError(
        f"stored entry has unknown compression {comp}; it was not written by leadperf "
        "(or by a newer version): delete the key or upgrade"
    )


def _unbrotli(payload: bytes, limit: int) -> bytes:
    # brotli's output_buffer_limit stops output growing at the limit, so a small forged
    # entry that would expand to gigabytes costs at most ``limit`` bytes and the time to
    # produce them.
    decompressor = _brotli().Decompressor()
    chunks = [decompressor.process(payload, output_buffer_limit=limit + 1)]
    total = len(chunks[0])
    while total <= limit and not decompressor.is_finished():
        if decompressor.can_accept_more_data():
            raise SerializationError("stored brotli entry is truncated; delete the key")
        chunk = decompressor.process(b"", output_buffer_limit=limit + 1 - total)
        if not chunk:
            raise SerializationError("stored brotli entry is truncated; delete the key")
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise _too_large(limit)
    return b"".join(chunks)


_brotli_module: Any = None


def _brotli() -> Any:
    global _brotli_module
    if _brotli_module is None:
        _brotli_module = require("brotli", "all", "brotli")
    return _brotli_module
