"""Binary COPY dumpers for 1-D ``text``/``varchar``/``int4``/``int8`` arrays, by oid only.

psycopg's generic array dumper is pure Python and was most of a 100K-row COPY's client
time when a row carries a ``tags`` list; these write the same wire format in a few joins.
Anything else (nested lists, wrong element types, an int out of range) raises, and the
batch falls back to text COPY, where the server parses the value.

This module imports psycopg at import time: import it only where psycopg is needed.
"""

from __future__ import annotations

import struct
from typing import Any

from psycopg.adapt import Dumper
from psycopg.postgres import types
from psycopg.pq import Format

__all__ = ["array_dumpers"]

_pack_len = struct.Struct("!i").pack
_NULL = b"\xff\xff\xff\xff"


def _header(elem_oid: int, items: list[Any], has_null: bool) -> bytes:
    if not items:
        return struct.pack("!iiI", 0, 0, elem_oid)
    return struct.pack("!iiIii", 1, int(has_null), elem_oid, len(items), 1)


def _text(item: object) -> bytes:
    if type(item) is not str:
        raise TypeError(f"array element {type(item).__name__} is not a str")
    return item.encode()


def _text_array(elem_oid: int, array_oid: int) -> type[Dumper]:
    # Headers of NULL-free arrays by length, built once: most arrays are short.
    heads = {n: struct.pack("!iiIii", 1, 0, elem_oid, n, 1) for n in range(1, 33)}

    class TextArrayDumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            if type(obj) is not list:
                raise TypeError(f"expected a list, got {type(obj).__name__}")
            if None in obj:
                return self._with_nulls(obj)
            parts = [heads.get(len(obj)) or _header(elem_oid, obj, False)]
            append = parts.append
            for item in obj:
                if type(item) is not str:
                    raise TypeError(f"array element {type(item).__name__} is not a str")
                data = item.encode()
                append(_pack_len(len(data)))
                append(data)
            return b"".join(parts)

        def _with_nulls(self, obj: list[Any]) -> bytes:
            parts = [_header(elem_oid, obj, True)]
            for item in obj:
                if item is None:
                    parts.append(_NULL)
                else:
                    data = _text(item)
                    parts.append(_pack_len(len(data)) + data)
            return b"".join(parts)

    return TextArrayDumper


def _int_array(elem_oid: int, array_oid: int, fmt: str) -> type[Dumper]:
    elem = struct.Struct(fmt)
    size = _pack_len(elem.size)

    class IntArrayDumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            if type(obj) is not list:
                raise TypeError(f"expected a list, got {type(obj).__name__}")
            parts = [_header(elem_oid, obj, None in obj)]
            for item in obj:
                if item is None:
                    parts.append(_NULL)
                elif type(item) is int:
                    parts.append(size)
                    parts.append(elem.pack(item))  # struct.error when out of range
                else:
                    raise TypeError(f"array element {type(item).__name__} is not an int")
            return b"".join(parts)

    return IntArrayDumper


def array_dumpers() -> list[type[Dumper]]:
    """The four dumpers, to register by oid (``adapters.register_dumper(None, d)``)."""
    text, varchar = types["text"], types["varchar"]
    int4, int8 = types["int4"], types["int8"]
    return [
        _text_array(text.oid, text.array_oid),
        _text_array(varchar.oid, varchar.array_oid),
        _int_array(int4.oid, int4.array_oid, "!i"),
        _int_array(int8.oid, int8.array_oid, "!q"),
    ]
