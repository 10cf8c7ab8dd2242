"""migrate_sqlite: SQLite cache rows into PostgreSQL, skipping expired, idempotent."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from leadperf import Settings
from leadperf.cache import PostgresCache, SqliteCache, migrate_sqlite
from leadperf.errors import ConfigError

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SETTINGS = Settings()


def _rows(database_url: str, table: str) -> list[tuple[str, bool]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url) as conn:
        return conn.execute(
            sql.SQL("SELECT key, expires_at IS NULL FROM {} ORDER BY key").format(
                sql.Identifier(table)
            )
        ).fetchall()


def _drop(database_url: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


async def test_migrate_sqlite_cache_file(
    tmp_path: Path, database_url: str, unique_name: str
) -> None:
    path = tmp_path / "old.db"
    async with SqliteCache(path, settings=SETTINGS) as lite:
        await lite.set_many(
            {f"lead:{i}": {"i": i, "html": b"<b>" * 50} for i in range(250)}, ttl=600
        )
        await lite.set("gone", "expired", ttl=0.1)
    await anyio.sleep(0.15)
    try:
        async with PostgresCache(database_url, table=unique_name, settings=SETTINGS) as pg:
            assert await migrate_sqlite(path, pg, batch_size=100) == 250
            assert await pg.get("lead:7") == {"i": 7, "html": b"<b>" * 50}
            assert await pg.get("gone") is None
            first = _rows(database_url, unique_name)
            assert len(first) == 250
            assert await migrate_sqlite(path, pg, batch_size=100) == 250
            assert _rows(database_url, unique_name) == first
            assert await pg.get_many(["lead:0", "lead:249"]) == {
                "lead:0": {"i": 0, "html": b"<b>" * 50},
                "lead:249": {"i": 249, "html": b"<b>" * 50},
            }
    finally:
        _drop(database_url, unique_name)


async def test_migrate_legacy_json_table(
    tmp_path: Path, database_url: str, unique_name: str
) -> None:
    path = tmp_path / "legacy.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE cache (key TEXT PRIMARY KEY, value TEXT, expires_at REAL)")
    now = time.time()
    db.executemany(
        "INSERT INTO cache VALUES (?, ?, ?)",
        [
            ("live", json.dumps({"a": 1}), now + 600),
            ("forever", json.dumps([1, 2]), None),
            ("expired", json.dumps("x"), now - 1),
            ("broken", "{not json", now + 600),
        ],
    )
    db.commit()
    db.close()
    try:
        async with PostgresCache(
            database_url, table=unique_name, namespace="app", settings=SETTINGS
        ) as pg:
            copied = await migrate_sqlite(path, pg, table="cache", add_namespace=True)
            assert copied == 2
            assert await pg.get_many(["live", "forever", "expired", "broken"]) == {
                "live": {"a": 1},
                "forever": [1, 2],
            }
            assert _rows(database_url, unique_name) == [("app:forever", True), ("app:live", False)]
            with pytest.raises(ConfigError, match="table"):
                await migrate_sqlite(path, pg, table="nope")
            with pytest.raises(ConfigError, match="sqlite_path"):
                await migrate_sqlite(tmp_path / "missing.db", pg)
    finally:
        _drop(database_url, unique_name)


async def test_migrate_signed_entries_are_verified_and_resigned(
    tmp_path: Path, database_url: str, unique_name: str
) -> None:
    from leadperf.cache import Codec

    key = "m" * 32
    path = tmp_path / "signed.db"
    async with SqliteCache(path, codec=Codec(sign_key=key), settings=SETTINGS) as lite:
        await lite.set("lead:1", {"score": 1})
    db = sqlite3.connect(path)
    forged = Codec().encode({"score": 99})
    db.execute("INSERT INTO leadperf_cache VALUES ('leadperf:forged', ?, NULL, 0)", (forged,))
    db.commit()
    db.close()
    try:
        async with PostgresCache(
            database_url,
            table=unique_name,
            namespace="app",
            codec=Codec(sign_key=key),
            settings=SETTINGS,
        ) as pg:
            # Under a new namespace the stored key changes: entries are re-signed for it,
            # and the unsigned intruder row is signed too (the SQLite file is trusted) ...
            assert await migrate_sqlite(path, pg, add_namespace=True) == 2
            assert await pg.get("leadperf:lead:1") == {"score": 1}
        # ... while a PostgreSQL cache without the key copies none of the signed rows.
        async with PostgresCache(database_url, table=unique_name + "u", settings=SETTINGS) as pg2:
            assert await migrate_sqlite(path, pg2) == 1
            assert await pg2.get("forged") == {"score": 99}
            assert await pg2.get("lead:1") is None
    finally:
        _drop(database_url, unique_name)
        _drop(database_url, unique_name + "u")
