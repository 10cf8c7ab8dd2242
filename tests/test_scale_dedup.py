"""DedupSet on real Redis and PostgreSQL, URL normalisation, and InflightCache.

InflightCache is tested through two separate AsyncScrapers (each with its own in-process
dedup) sharing one Redis cache, against the recording server: the server's own hit count
says whether a URL was fetched once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from leadperf.errors import CacheUnavailableError, ClosedError, ConfigError
from leadperf.scale import DedupSet, InflightCache, PostgresDedupSet, RedisDedupSet, normalize_url

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM:80/a#frag", "http://example.com/a"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x?b=1", "https://example.com:8443/x?b=1"),
        ("http://Bücher.example/ä", "http://xn--bcher-kva.example/ä"),
        ("http://XN--BCHER-KVA.example/", "http://xn--bcher-kva.example/"),
        ("http://[::1]:8080/p", "http://[::1]:8080/p"),
        ("http://user:pw@Host.com:80/", "http://user:pw@host.com/"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_normalize_url_query_order_is_opt_in() -> None:
    url = "http://a.com/p?b=2&a=1&a=0&c="
    assert normalize_url(url) == url
    assert normalize_url(url, sort_query=True) == "http://a.com/p?a=0&a=1&b=2&c="


@pytest.mark.parametrize("bad", ["ftp://a.com/", "/relative", "http://", "http://a.com:99999/", 5])
def test_normalize_url_rejects_what_is_not_an_http_url(bad: Any) -> None:
    with pytest.raises(ConfigError):
        normalize_url(bad)


def test_normalize_url_rejects_invalid_idna() -> None:
    with pytest.raises(ConfigError, match="internationalised"):
        normalize_url("http://a\u200d\u200db.com/")


@pytest.fixture(params=["redis", "postgres"])
async def dedup(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[DedupSet]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "database_url")
    store = DedupSet.from_url(url, name=unique_name)
    yield store
    if not store.closed:
        await store.clear()  # type: ignore[attr-defined]
        await store.close()
    if request.param == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS leadperf_dedup_{unique_name}")


async def test_add_many_answers_new_once_in_one_round_trip(dedup: DedupSet) -> None:
    urls = [
        "http://a.com/1",
        "HTTP://A.com:80/1#x",  # the same resource spelled differently
        "http://a.com/2",
        "http://a.com/2",  # repeated in the same call
        "not a url",  # kept, keyed by its text
        "not a url",
    ]
    assert await dedup.add_many(urls) == [True, False, True, False, True, False]
    assert dedup.stats().round_trips == 1
    assert await dedup.add_many(["http://a.com/2", "http://a.com/3"]) == [False, True]
    assert await dedup.contains_many(["http://a.com/1#y", "http://a.com/9"]) == [True, False]
    assert await dedup.remove_many(["http://a.com/1"]) == 1
    assert await dedup.add("http://a.com/1") is True
    assert await dedup.add_many([]) == []
    stats = dedup.stats()
    assert (stats.offered, stats.added) == (9, 5)


async def test_concurrent_workers_get_each_url_once(dedup: DedupSet, unique_name: str) -> None:
    url = dedup._dsn if isinstance(dedup, PostgresDedupSet) else None
    stores = [dedup] + [
        DedupSet.from_url(url or _redis_url(dedup), name=unique_name) for _ in range(3)
    ]
    urls = [f"http://h{i % 7}.example/{i}" for i in range(600)]
    try:
        # Each worker offers every URL in its own order, in batches of 50, all at once.
        async def worker(n: int, store: DedupSet) -> list[str]:
            order = urls[n * 150 :] + urls[: n * 150]
            won: list[str] = []
            for i in range(0, len(order), 50):
                batch = order[i : i + 50]
                won += [u for u, new in zip(batch, await store.add_many(batch), strict=True) if new]
            return won

        results = await asyncio.gather(*(worker(n, s) for n, s in enumerate(stores)))
    finally:
        for store in stores[1:]:
            await store.close()
    won = [u for part in results for u in part]
    assert sorted(won) == sorted(urls)  # every URL to exactly one worker
    assert sum(1 for part in results if part) >= 2, "the workers really raced"


def _redis_url(store: DedupSet) -> str:
    assert isinstance(store, RedisDedupSet)
    pool = store._client.connection_pool.connection_kwargs
    return f"redis://{pool['host']}:{pool['port']}/{pool['db']}"


async def test_ttl_lets_a_url_count_as_new_again(dedup: DedupSet, unique_name: str) -> None:
    url = dedup._dsn if isinstance(dedup, PostgresDedupSet) else _redis_url(dedup)
    store = DedupSet.from_url(url, name=unique_name, ttl=0.3)
    try:
        assert await store.add_many(["http://t.com/1"]) == [True]
        assert await store.add_many(["http://t.com/1"]) == [False]
        deadline = time.monotonic() + 5
        while not await store.add("http://t.com/1"):
            assert time.monotonic() < deadline, "the entry never expired"
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_closed_and_bad_input(dedup: DedupSet) -> None:
    await dedup.close()
    await dedup.close()
    with pytest.raises(ClosedError):
        await dedup.add_many(["http://a.com/"])
    with pytest.raises(ConfigError, match="expected redis"):
        DedupSet.from_url("memcached://127.0.0.1")
    with pytest.raises(ConfigError, match="name"):
        DedupSet.from_url("redis://127.0.0.1", name="Bad-Name")
    with pytest.raises(ConfigError, match="ttl"):
        DedupSet.from_url("redis://127.0.0.1", ttl=-1)


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@127.0.0.1:{port}/0", "postgresql://u:s3cret@127.0.0.1:{port}/db"]
)
async def test_unreachable_store_raises_without_credentials(url: str, reliability: Any) -> None:
    from scale_worker import free_port

    store = DedupSet.from_url(url.format(port=free_port()))
    assert "s3cret" not in repr(store)
    try:
        with pytest.raises(CacheUnavailableError) as info:
            await store.add_many(["http://a.com/"])
    finally:
        await store.close()
    assert "s3cret" not in str(info.value)
    reliability.record(
        "scale",
        f"dedup store unreachable ({url.split(':')[0]})",
        "a typed error saying what to check, without the password",
        f"{type(info.value).__name__}: {info.value}",
    )


@pytest.mark.redis
async def test_inflight_cache_shares_one_fetch_between_scrapers(
    redis_url: str, unique_name: str
) -> None:
    from leadperf import AsyncScraper
    from leadperf.cache import from_url
    from scrape_server import ScrapeServer

    caches = [from_url(redis_url, namespace=unique_name) for _ in range(3)]
    try:
        with ScrapeServer(ports=1) as server:
            url = server.url(0, "/page/slow?size=64&delay=0.4")
            async with contextlib.AsyncExitStack() as stack:
                scrapers = [
                    await stack.enter_async_context(AsyncScraper(cache=InflightCache(c, wait=5.0)))
                    for c in caches
                ]
                results = await asyncio.gather(*(s.fetch(url) for s in scrapers))
            assert server.hits("/page/slow?size=64&delay=0.4") == 1
        assert all(r.ok for r in results)
        assert sorted(r.from_cache for r in results) == [False, True, True]
        assert len({r.content for r in results}) == 1
    finally:
        for c in caches:
            await c.clear()
            await c.close()


@pytest.mark.redis
async def test_inflight_waiter_fetches_itself_after_the_timeout(
    redis_url: str, unique_name: str, reliability: Any
) -> None:
    from leadperf import AsyncScraper
    from leadperf.cache import from_url
    from scrape_server import ScrapeServer

    cache = from_url(redis_url, namespace=unique_name)
    try:
        with ScrapeServer(ports=1) as server:
            url = server.url(0, "/page/orphan?size=64")
            inflight = InflightCache(cache, wait=0.5)
            # A worker claimed the URL and died before storing anything.
            await cache.add(InflightCache.claim_key(f"scrape:GET {url}"), "dead", ttl=30)
            async with AsyncScraper(cache=inflight) as scraper:
                started = time.monotonic()
                result = await scraper.fetch(url)
                waited = time.monotonic() - started
            assert result.ok
            assert not result.from_cache
            assert server.hits("/page/orphan?size=64") == 1
        assert 0.45 <= waited < 3.0
        assert inflight.wait_timeouts == 1
        reliability.record(
            "scale",
            "the worker fetching a URL died (its in-flight claim stays)",
            "a waiting worker fetches the URL itself after `wait`",
            f"waited {waited:.2f} s (wait=0.5 s), then fetched it once",
        )
    finally:
        await cache.clear()
        await cache.close()


def test_inflight_cache_rejects_a_non_cache() -> None:
    with pytest.raises(ConfigError, match="cache"):
        InflightCache(object())
    with pytest.raises(ConfigError, match="wait"):
        InflightCache(_Dummy(), wait=0)


class _Dummy:
    """Has every method a cache needs; never called, only checked for."""

    async def get(self, key: str, default: Any = None) -> Any:
        return default

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        return None

    async def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        return False

    async def delete(self, key: str) -> bool:
        return False


@pytest.mark.postgres
async def test_postgres_dedup_table_named_like_a_keyword(database_url: str) -> None:
    import psycopg

    # "order" is a valid lower-case identifier and a reserved word: it must be quoted.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS "order"')  # left by an interrupted run
    store = PostgresDedupSet(database_url, table="order", ttl=60)
    try:
        assert await store.add_many(["http://k.com/1", "http://k.com/2"]) == [True, True]
        assert await store.add_many(["http://k.com/2", "http://k.com/3"]) == [False, True]
        assert await store.contains_many(["http://k.com/1", "http://k.com/9"]) == [True, False]
        assert await store.remove_many(["http://k.com/1"]) == 1
        with psycopg.connect(database_url) as conn:
            assert conn.execute('SELECT count(*) FROM "order"').fetchone() == (2,)
        assert await store.clear() == 2
    finally:
        await store.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute('DROP TABLE IF EXISTS "order"')


@pytest.mark.postgres
async def test_postgres_dedup_stores_creating_one_table_at_once(
    database_url: str, unique_name: str
) -> None:
    import psycopg

    # Stores opened together all run CREATE TABLE IF NOT EXISTS on first use; without a
    # lock PostgreSQL can refuse the losers (a duplicate row type or index name).
    for attempt in range(5):
        table = f"{unique_name}_{attempt}"
        stores = [PostgresDedupSet(database_url, table=table, pool_size=1) for _ in range(8)]
        try:
            flags = await asyncio.gather(*(s.add_many(["http://same.example/"]) for s in stores))
        finally:
            for store in stores:
                await store.close()
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        assert sorted(f[0] for f in flags) == [False] * 7 + [True]


@pytest.mark.postgres
@pytest.mark.parametrize("call", ["remove_many", "clear", "contains_many", "add_many"])
async def test_postgres_dedup_lost_server_is_a_typed_error(
    call: str, database_url: str, unique_name: str
) -> None:
    import psycopg

    store = PostgresDedupSet(database_url, table=unique_name, pool_size=1)
    try:
        await store.add_many(["http://gone.example/1"])
        with psycopg.connect(database_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                "FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{unique_name}%",),
            ).fetchone()
        assert killed == (1,)  # the store's one pooled connection
        args = () if call == "clear" else (["http://gone.example/1"],)
        with pytest.raises(CacheUnavailableError, match="unreachable"):
            await getattr(store, call)(*args)
    finally:
        await store.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{unique_name}"')
