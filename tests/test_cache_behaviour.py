"""One behaviour suite run over every cache backend, each against its real store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from leadperf import Settings
from leadperf.cache import (
    MAX_KEY_LENGTH,
    Cache,
    CacheStats,
    Codec,
    MemoryCache,
    PostgresCache,
    RedisCache,
    SqliteCache,
    TieredCache,
    from_url,
)
from leadperf.errors import (
    CacheKeyError,
    ClosedError,
    ConfigError,
    SerializationError,
)

pytestmark = pytest.mark.anyio

SETTINGS = Settings()
BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("tiered", marks=pytest.mark.redis),
]


def drop_table(database_url: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def make_cache(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str, **options: Any
) -> Any:
    if kind == "memory":
        return MemoryCache(namespace=name, settings=SETTINGS, **options)
    if kind == "sqlite":
        return SqliteCache(tmp_path / "cache.db", namespace=name, settings=SETTINGS, **options)
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return RedisCache(url, namespace=name, settings=SETTINGS, **options)
    if kind == "postgres":
        url = request.getfixturevalue("database_url")
        return PostgresCache(url, table=name, namespace=name, settings=SETTINGS, **options)
    url = request.getfixturevalue("redis_url")
    return TieredCache(
        MemoryCache(namespace=name, settings=SETTINGS, **options),
        RedisCache(url, namespace=name, settings=SETTINGS, **options),
    )


@pytest.fixture(params=BACKENDS)
async def cache(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> AsyncIterator[Any]:
    kind = request.param
    c = make_cache(kind, request, tmp_path, unique_name)
    async with c:
        yield c
        if not c.closed:
            await c.clear()
    if kind == "postgres":
        drop_table(request.getfixturevalue("database_url"), unique_name)


VALUES: list[Any] = [
    b"\x00\x01raw bytes\xff",
    "unicode text: caf\u00e9 \u2603",
    42,
    -3.5,
    True,
    None,
    [1, "two", b"three", None],
    {"status": 200, "headers": {"content-type": "text/html"}, "body": b"<html>" * 400},
    {"nested": {"deep": [{"k": "v" * 3000}]}},
    b"x" * 100_000,
]


async def test_is_a_cache(cache: Any) -> None:
    assert isinstance(cache, Cache)


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
async def test_round_trip(cache: Any, value: Any) -> None:
    await cache.set("k", value)
    assert await cache.get("k", "absent") == value
    assert await cache.exists("k")


async def test_miss_returns_default_and_counts(cache: Any) -> None:
    assert await cache.get("nope") is None
    assert await cache.get("nope", "d") == "d"
    await cache.set("yes", 1)
    assert await cache.get("yes") == 1
    s = cache.stats()
    assert isinstance(s, CacheStats)
    assert (s.hits, s.misses, s.sets) == (1, 2, 1)
    assert s.hit_rate == pytest.approx(1 / 3)
    assert s.errors == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.hits = 5  # type: ignore[misc]


async def test_ttl_expiry_is_never_returned(cache: Any) -> None:
    await cache.set("short", "v", ttl=0.2)
    await cache.set_many({"m1": 1, "m2": 2}, ttl=0.2)
    await cache.set("long", "v", ttl=30)
    assert await cache.get("short") == "v"
    await anyio.sleep(0.3)
    assert await cache.get("short") is None
    assert not await cache.exists("short")
    assert await cache.get_many(["short", "m1", "m2", "long"]) == {"long": "v"}
    assert not await cache.delete("m1")  # expired entries do not count as deleted


@pytest.mark.parametrize("kind", BACKENDS)
async def test_default_ttl_applies(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    c = make_cache(kind, request, tmp_path, unique_name, default_ttl=0.2)
    async with c:
        await c.set("k", 1)
        assert await c.get("k") == 1
        await anyio.sleep(0.3)
        assert await c.get("k") is None
    if kind == "postgres":
        drop_table(request.getfixturevalue("database_url"), unique_name)
    with pytest.raises(ConfigError, match="default_ttl"):
        MemoryCache(default_ttl=-1, settings=SETTINGS)
    assert MemoryCache(settings=Settings(cache={"default_ttl": 12.0})).default_ttl == 12.0


async def test_add_only_when_absent(cache: Any) -> None:
    assert await cache.add("k", "first")
    assert not await cache.add("k", "second")
    assert await cache.get("k") == "first"
    await cache.set("e", "old", ttl=0.2)
    await anyio.sleep(0.3)
    assert await cache.add("e", "new")  # an expired entry is absent
    assert await cache.get("e") == "new"


async def test_delete_and_exists(cache: Any) -> None:
    await cache.set("k", 1)
    assert await cache.exists("k")
    assert await cache.delete("k")
    assert not await cache.delete("k")
    assert not await cache.exists("k")
    assert cache.stats().deletes == 1


async def test_get_many_set_many(cache: Any) -> None:
    data = {f"k{i}": {"i": i, "b": bytes([i])} for i in range(50)}
    await cache.set_many(data, ttl=30)
    got = await cache.get_many([*data, "missing", "k0"])
    assert got == data
    s = cache.stats()
    assert s.hits == 50
    assert s.misses == 1
    assert await cache.get_many([]) == {}


async def test_clear_pattern_counts_and_matches_literally(cache: Any) -> None:
    await cache.set_many({"user:1": 1, "user:2": 2, "page:1": 3, "a[1]x": 4, "a1x": 5, "a%_": 6})
    assert await cache.clear("user:*") == 2
    assert await cache.get_many(["user:1", "user:2", "page:1"]) == {"page:1": 3}
    # Glob metacharacters other than * and ? are literal.
    assert await cache.clear("a[1]*") == 1
    assert await cache.get("a1x") == 5
    # LIKE metacharacters are literal too.
    assert await cache.clear("a%_") == 1
    assert await cache.get("a1x") == 5
    assert await cache.clear("page:?") == 1
    assert await cache.clear() == 1
    assert await cache.get("a1x") is None


async def test_bad_keys(cache: Any) -> None:
    for bad in (123, b"bytes", None, "", "a\x00b", "k" * (MAX_KEY_LENGTH + 1)):
        with pytest.raises(CacheKeyError):
            await cache.get(bad)
        with pytest.raises(CacheKeyError):
            await cache.set(bad, 1)
    with pytest.raises(CacheKeyError):
        await cache.get_many(["ok", 5])
    longest = "k" * MAX_KEY_LENGTH
    await cache.set(longest, "fits")
    assert await cache.get(longest) == "fits"


async def test_bad_ttl_writes_nothing(cache: Any) -> None:
    for bad in (-1, 0, -0.5, float("inf"), float("nan"), True, "10"):
        with pytest.raises(ConfigError, match="ttl"):
            await cache.set("k", 1, ttl=bad)
    with pytest.raises(ConfigError):
        await cache.set_many({"a": 1}, ttl=-1)
    assert await cache.get_many(["k", "a"]) == {}


async def test_non_serializable_value_writes_nothing(cache: Any) -> None:
    await cache.set("k", "old")
    with pytest.raises(SerializationError, match="object"):
        await cache.set("k", object())
    with pytest.raises(SerializationError):
        await cache.set("k", {"when": {1, 2}})
    with pytest.raises(SerializationError):
        await cache.set_many({"a": 1, "b": object()})
    assert await cache.get("k") == "old"
    assert await cache.get_many(["a", "b"]) == {}


async def test_closed_cache_raises_and_close_is_idempotent(cache: Any) -> None:
    await cache.close()
    await cache.close()
    with pytest.raises(ClosedError):
        await cache.get("k")
    with pytest.raises(ClosedError):
        await cache.set("k", 1)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_opens_lazily_without_context_manager(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    c = make_cache(kind, request, tmp_path, unique_name)
    try:
        await c.set("k", "v")
        assert await c.get("k") == "v"
        assert await c.clear() == 1
    finally:
        await c.close()
        if kind == "postgres":
            drop_table(request.getfixturevalue("database_url"), unique_name)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_namespaces_are_isolated(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    a = make_cache(kind, request, tmp_path, unique_name + "a")
    b = make_cache(kind, request, tmp_path, unique_name + "a*")  # glob char in namespace
    async with a, b:
        await a.set("k", "from a")
        await b.set("k", "from b")
        assert await a.get("k") == "from a"
        assert await b.clear() == 1
        assert await a.get("k") == "from a"
        assert await b.get("k") is None
        assert await a.clear() == 1


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_entries_written_with_one_codec_read_with_another(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    value = {"body": b"<p>lead</p>" * 500, "text": "x" * 5000}
    writers = [
        Codec(compression="br", threshold=0),
        Codec(compression="gzip", threshold=0),
        Codec(compression="none"),
        Codec(serializer="json", compression="br", threshold=0),
    ]
    for i, codec in enumerate(writers):
        w = make_cache(kind, request, tmp_path, unique_name, codec=codec)
        async with w:
            await w.set(f"k{i}", value)
    for codec in writers:
        r = make_cache(kind, request, tmp_path, unique_name, codec=codec)
        async with r:
            got = await r.get_many([f"k{i}" for i in range(len(writers))])
            assert got == {f"k{i}": value for i in range(len(writers))}
    async with make_cache(kind, request, tmp_path, unique_name) as c:
        assert await c.clear() == len(writers)


async def test_from_url_builds_each_backend(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    mem = from_url("memory://?max_size=7", settings=SETTINGS)
    assert isinstance(mem, MemoryCache)
    assert mem.max_size == 7
    lite = from_url(f"sqlite:///{tmp_path}/x.db?busy_timeout=1", settings=SETTINGS)
    assert isinstance(lite, SqliteCache)
    assert lite.path == tmp_path / "x.db"
    assert lite.busy_timeout == 1.0
    r = from_url("redis://:secret@127.0.0.1:6379/15", namespace="n", settings=SETTINGS)
    assert isinstance(r, RedisCache)
    assert r.namespace == "n"
    assert "secret" not in repr(r)
    for scheme in ("postgresql", "postgres"):
        p = from_url(f"{scheme}://u:secret@127.0.0.1/db?password=secret2", settings=SETTINGS)
        assert isinstance(p, PostgresCache)
        assert "secret" not in repr(p)
    for bad in ("mongodb://x", "nocolon", "", "sqlite://relative.db"):
        with pytest.raises(ConfigError, match="url"):
            from_url(bad)
    with pytest.raises(ConfigError, match="max_sise"):
        from_url("memory://?max_sise=3")


# -- hostile stored data and bounds (every backend) ----------------------------------------

SIGN_KEY = "s" * 32
STORED = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
STORED += [pytest.param("postgres", marks=pytest.mark.postgres)]


def write_raw(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, table: str, key: str, raw: bytes
) -> None:
    """Write ``raw`` under stored key ``key`` behind the cache's back, as an intruder would."""
    if kind == "sqlite":
        import sqlite3

        db = sqlite3.connect(tmp_path / "cache.db")
        db.execute("INSERT OR REPLACE INTO leadperf_cache VALUES (?, ?, NULL, 0)", (key, raw))
        db.commit()
        db.close()
    elif kind == "redis":
        import redis

        r = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        r.set(key, raw, px=60_000)
        r.close()
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(request.getfixturevalue("database_url"), autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (key, value, expires_at) VALUES (%s, %s, NULL) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ).format(sql.Identifier(table)),
                (key, raw),
            )


@pytest.mark.parametrize("kind", STORED)
async def test_forged_entries_are_refused_by_a_signing_cache(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    signer = Codec(sign_key=SIGN_KEY)
    c = make_cache(kind, request, tmp_path, unique_name, codec=signer)
    try:
        async with c:
            await c.set("user", {"admin": False})
            assert await c.get("user") == {"admin": False}
            # An intruder with write access to the store writes an unsigned entry ...
            forged = Codec().encode({"admin": True})
            write_raw(kind, request, tmp_path, unique_name, f"{unique_name}:user", forged)
            assert await c.get("user", "refused") == "refused"
            assert await c.get_many(["user"]) == {}
            # ... or copies a genuinely signed entry from another key.
            await c.set("other", {"admin": True})
            moved = signer.encode({"admin": True}, f"{unique_name}:other")
            write_raw(kind, request, tmp_path, unique_name, f"{unique_name}:user", moved)
            assert await c.get("user", "refused") == "refused"
            assert c.stats().errors == 3
            strict = make_cache(
                kind, request, tmp_path, unique_name, codec=signer, raise_errors=True
            )
            async with strict:
                with pytest.raises(SerializationError, match="does not verify"):
                    await strict.get("user")
            # What the application itself wrote still reads back.
            assert await c.get("other") == {"admin": True}
    finally:
        if kind == "postgres":
            drop_table(request.getfixturevalue("database_url"), unique_name)


@pytest.mark.parametrize("kind", STORED)
async def test_decompression_bomb_in_the_store_is_a_quick_miss(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    import time

    from test_cache_codec import BROTLI_BOMB

    c = make_cache(kind, request, tmp_path, unique_name)
    try:
        async with c:
            await c.set("page", "fine")
            write_raw(
                kind, request, tmp_path, unique_name, f"{unique_name}:page", b"\x21" + BROTLI_BOMB
            )
            started = time.perf_counter()
            assert await c.get("page", "refused") == "refused"
            assert time.perf_counter() - started < 2.0
            assert c.stats().errors == 1
    finally:
        if kind == "postgres":
            drop_table(request.getfixturevalue("database_url"), unique_name)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_max_value_size_refuses_before_writing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    c = make_cache(kind, request, tmp_path, unique_name, max_value_size=2000)
    try:
        async with c:
            await c.set("small", b"x" * 500)
            with pytest.raises(SerializationError, match="max_value_size"):
                await c.set("big", os.urandom(5000))
            with pytest.raises(SerializationError, match="max_value_size"):
                await c.set_many({"ok": 1, "big": os.urandom(5000)})
            assert not await c.exists("big")
            assert not await c.exists("ok")  # set_many checks every value before writing
            assert await c.get("small") == b"x" * 500
    finally:
        if kind == "postgres":
            drop_table(request.getfixturevalue("database_url"), unique_name)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_namespaces_cannot_nest(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> None:
    with pytest.raises(ConfigError, match="namespace"):
        make_cache(kind, request, tmp_path, unique_name + ":b")
    # The neighbour that used to be reachable ("a" + ":b...") now has to be spelled apart,
    # and clearing "a" leaves it alone.
    a = make_cache(kind, request, tmp_path, unique_name)
    b = make_cache(kind, request, tmp_path, unique_name + "-b")
    try:
        async with a, b:
            await a.set("b:k", "a's key with a colon")
            await b.set("k", "b's key")
            assert await a.clear("*") == 1
            assert await b.get("k") == "b's key"
            assert await b.clear() == 1
    finally:
        if kind == "postgres":
            drop_table(request.getfixturevalue("database_url"), unique_name)
            drop_table(request.getfixturevalue("database_url"), unique_name + "-b")
