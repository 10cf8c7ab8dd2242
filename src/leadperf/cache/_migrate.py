"""Copy an existing SQLite cache table into a PostgresCache."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from .._core.validate import positive_int
from ..errors import ConfigError
from ._codec import SIGNED, Codec
from ._postgres import PostgresCache

__all__ = ["migrate_sqlite"]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate_sqlite(
    sqlite_path: str | os.PathLike[str],
    postgres_cache: PostgresCache,
    *,
    table: str = "leadperf_cache",
    batch_size: int = 1000,
    add_namespace: bool = False,
) -> int:
    """Copy the live rows of SQLite ``table`` into ``postgres_cache``.

    Expected layout (what :class:`SqliteCache` writes): columns ``key`` (TEXT),
    ``value`` (BLOB written by the leadperf codec, or TEXT holding JSON) and
    ``expires_at`` (REAL Unix seconds, NULL for no expiry). Rows already expired are
    skipped; rows whose value cannot be read are skipped too. Rows are upserted in
    batches, so running it twice is harmless.

    Args:
        sqlite_path: the SQLite file (opened read-only).
        postgres_cache: the destination cache.
        table: the SQLite table to read.
        batch_size: rows per upsert (> 0).
        add_namespace: prefix each key with ``postgres_cache``'s namespace (for tables
            of bare keys); otherwise keys are copied as stored (a SqliteCache's
            ``"<namespace>:"`` prefix carries over).

    Returns:
        The number of rows copied.

    Raises:
        ConfigError: a bad argument, a missing file, or a table without those columns.
        CacheUnavailableError: PostgreSQL cannot be reached.
    """
    positive_int(batch_size, "batch_size")
    if not isinstance(postgres_cache, PostgresCache):
        raise ConfigError(
            f"postgres_cache: must be a PostgresCache, got {postgres_cache!r}", key="postgres_cache"
        )
    path = os.fspath(sqlite_path)
    if not os.path.isfile(path):  # noqa: ASYNC240 - one stat before a blocking read anyway
        raise ConfigError(f"sqlite_path: no such file {path!r}", key="sqlite_path")
    prefix = f"{postgres_cache.namespace}:" if add_namespace else ""
    reader = Codec(allow_pickle=False)
    writer = postgres_cache.codec
    await postgres_cache.open()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    copied = 0
    try:
        try:
            cur = db.execute(
                f"SELECT key, value, expires_at FROM {_quote(table)} "
                "WHERE expires_at IS NULL OR expires_at > ?",
                (time.time(),),
            )
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"table: cannot read {table!r} in {path!r} ({exc}); the table needs columns "
                "key, value and expires_at (see docs/cache.md)",
                key="table",
            ) from exc
        while True:
            rows = cur.fetchmany(batch_size)
            if not rows:
                break
            batch: list[tuple[str, bytes, float | None]] = []
            for key, value, expires_at in rows:
                if not isinstance(key, str) or not key:
                    continue
                stored = _convert(key, prefix + key, value, reader, writer)
                if stored is None:
                    continue
                batch.append((prefix + key, stored, expires_at))
            if batch:
                await postgres_cache.put_raw(batch)
                copied += len(batch)
    finally:
        db.close()
    return copied


def _convert(old_key: str, new_key: str, value: Any, reader: Codec, writer: Codec) -> bytes | None:
    """Stored bytes for PostgreSQL, or None for a value this migration cannot read.

    Codec entries are copied as they are, unless signing is involved: a signed entry must
    verify with the PostgreSQL cache's keys, and is re-signed for its new key; an unsigned
    entry copied into a signing cache is signed on the way (the SQLite file is trusted).
    """
    if isinstance(value, bytes):
        if not Codec.is_encoded(value):
            return None
        signed = bool(value[0] & SIGNED)
        try:
            # Refuse corrupt, forged or pickle entries rather than copy them.
            obj = writer.decode(value, old_key) if signed else reader.decode(value)
            if signed or writer.signed:
                return writer.encode(obj, new_key)
        except Exception:
            return None
        return value
    if isinstance(value, str):
        try:
            return writer.encode(json.loads(value), new_key)
        except Exception:
            return None
    return None
