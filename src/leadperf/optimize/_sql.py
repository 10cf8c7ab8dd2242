"""SQL helpers shared by the database and archive parts (identifiers, array dumpers, cache keys).

psycopg is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from psycopg import sql

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "check_identifier",
    "fast_array_dumpers",
    "mask_dsn",
    "qualified",
    "query_cache_key",
]

# PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes; a silently truncated
# name would point at a different table, so longer names are refused up front.
MAX_IDENTIFIER_BYTES = 63


def check_identifier(name: object, what: str) -> str:
    """Return ``name`` if it is a usable PostgreSQL identifier, else raise ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be a non-empty string, got {name!r}", key=what)
    if "\x00" in name:
        raise ConfigError(f"{what} must not contain NUL characters", key=what)
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"{what} {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte "
            "identifier limit; use a shorter name",
            key=what,
        )
    return name


def qualified(schema: str | None, name: str) -> sql.Composable:
    """``"schema"."name"`` (or just ``"name"``), each part quoted by psycopg.sql."""
    from psycopg import sql

    if schema is None:
        return sql.Identifier(name)
    return sql.Identifier(schema, name)


def _param_default(value: object) -> object:
    # Type name plus text: 1 and "1", or a date and its ISO string, never share a key.
    return {"__type__": type(value).__qualname__, "value": str(value)}


def query_cache_key(scope: str, query: str, params: object) -> str:
    """A fixed-length cache key for ``query`` + ``params`` (sha256, so any text is safe)."""
    try:
        encoded = json.dumps(params, sort_keys=True, default=_param_default, ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # e.g. dict keys of mixed types
        raise ConfigError(
            f"query parameters cannot be turned into a cache key ({exc}); "
            "pass a sequence or mapping of plain values",
            key="params",
        ) from exc
    digest = hashlib.sha256()
    for part in (scope, query, encoded):
        data = part.encode()
        # Length-prefixed so ("ab", "c") and ("a", "bc") hash differently.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return f"leadperf:query:{digest.hexdigest()}"


_PASSWORD_KV = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """Mask the password of a URL or ``key=value`` DSN."""
    from .._core.redact import mask_dsn as _mask_dsn

    return _mask_dsn(dsn)


def fast_array_dumpers() -> list[type]:
    """Binary dumpers for 1-D text/varchar/int4/int8 arrays, by oid only (for COPY).

    psycopg's generic array dumper is pure Python and was most of a 100K-row COPY's
    client time when a row carries a ``tags`` list; these write the same wire format in a
    few joins. Anything else (NULL-free check aside: nested lists, wrong element types)
    raises TypeError, and the batch falls back to text COPY.
    """
    import struct

    from psycopg.adapt import Dumper
    from psycopg.postgres import types
    from psycopg.pq import Format

    pack_len = struct.Struct("!i").pack

    def _text(item: object) -> bytes:
        if type(item) is not str:
            raise TypeError(f"array element {type(item).__name__} is not a str")
        return item.encode()

    null = b"\xff\xff\xff\xff"

    def header(elem_oid: int, items: list[Any], has_null: bool) -> bytes:
        if not items:
            return struct.pack("!iiI", 0, 0, elem_oid)
        return struct.pack("!iiIii", 1, int(has_null), elem_oid, len(items), 1)

    def text_array(elem_oid: int, array_oid: int) -> type:
        # Headers of NULL-free 1-D arrays by length, built once: most arrays are short.
        heads = {n: struct.pack("!iiIii", 1, 0, elem_oid, n, 1) for n in range(1, 33)}

        class TextArrayDumper(Dumper):
            format = Format.BINARY
            oid = array_oid

            def dump(self, obj: Any) -> bytes:
                if type(obj) is not list:
                    raise TypeError(f"expected a list, got {type(obj).__name__}")
                if None in obj:
                    return self._with_nulls(obj)
                parts = [heads.get(len(obj)) or header(elem_oid, obj, False)]
                append = parts.append
                for item in obj:
                    if type(item) is not str:
                        raise TypeError(f"array element {type(item).__name__} is not a str")
                    data = item.encode()
                    append(pack_len(len(data)))
                    append(data)
                return b"".join(parts)

            def _with_nulls(self, obj: list[Any]) -> bytes:
                parts = [header(elem_oid, obj, True)]
                for item in obj:
                    if item is None:
                        parts.append(null)
                    else:
                        data = _text(item)
                        parts.append(pack_len(len(data)) + data)
                return b"".join(parts)

        return TextArrayDumper

    def int_array(elem_oid: int, array_oid: int, fmt: str) -> type:
        elem = struct.Struct(fmt)
        size = pack_len(elem.size)

        class IntArrayDumper(Dumper):
            format = Format.BINARY
            oid = array_oid

            def dump(self, obj: Any) -> bytes:
                if not isinstance(obj, list):
                    raise TypeError(f"expected a list, got {type(obj).__name__}")
                parts = [header(elem_oid, obj, None in obj)]
                for item in obj:
                    if item is None:
                        parts.append(null)
                    elif type(item) is int:
                        parts.append(size)
                        parts.append(elem.pack(item))  # struct.error when out of range
                    else:
                        raise TypeError(f"array element {type(item).__name__} is not an int")
                return b"".join(parts)

        return IntArrayDumper

    text, varchar = types["text"], types["varchar"]
    int4, int8 = types["int4"], types["int8"]
    return [
        text_array(text.oid, text.array_oid),
        text_array(varchar.oid, varchar.array_oid),
        int_array(int4.oid, int4.array_oid, "!i"),
        int_array(int8.oid, int8.array_oid, "!q"),
    ]
