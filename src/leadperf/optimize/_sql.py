"""SQL helpers shared by the database and archive parts (identifiers, cache keys).

psycopg is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from psycopg import sql

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "check_identifier",
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


def mask_dsn(dsn: str) -> str:
    """Mask the password of a URL or ``key=value`` DSN."""
    from .._core.redact import mask_dsn as _mask_dsn

    return _mask_dsn(dsn)
