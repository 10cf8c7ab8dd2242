"""RedisLimiter against a real Redis: leases, spacing, shared slow-down, fallback, scripts.

Two limiters with their own clients stand for two workers. Concurrency is read from the
recording HTTP server (tests/scrape_server.py) and lease state from Redis itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import httpx
import pytest

from leadperf.errors import ClosedError, ConfigError
from leadperf.scale import Lease, RedisLimiter
from scale_worker import OwnRedis, free_port
from scrape_server import ScrapeServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def own_redis() -> Any:
    server = OwnRedis().start()
    yield server
    server.close()


async def _cleanup(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=prefix + ":*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _still_waiting(acquire: Any, seconds: float) -> None:
    """Assert ``acquire`` is still waiting after ``seconds``; cancel it (bounded)."""
    task = asyncio.ensure_future(acquire)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert not done, "acquire returned while every slot was held"
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5.0)
    assert done, "a cancelled acquire kept waiting"
    assert task.cancelled()


async def _fetch_all(
    limiters: list[RedisLimiter], urls: list[str], limit: int, delay: float
) -> None:
    async with httpx.AsyncClient() as client:

        async def one(i: int, url: str) -> None:
            limiter = limiters[i % len(limiters)]
            platform = url.split("/")[2]
            lease = await limiter.acquire(platform, limit, delay)
            try:
                response = await client.get(url)
            finally:
                await limiter.release(platform, lease)
            await limiter.report(platform, response.status_code, None)

        async with anyio.create_task_group() as tg:
            for i, url in enumerate(urls):
                tg.start_soon(one, i, url)


async def test_two_workers_never_exceed_the_limit(redis_url: str, unique_name: str) -> None:
    a = RedisLimiter(redis_url, prefix=unique_name)
    b = RedisLimiter(redis_url, prefix=unique_name)
    try:
        with ScrapeServer(ports=1) as server:
            urls = [server.url(0, f"/page/{i}?size=64&delay=0.05") for i in range(40)]
            await _fetch_all([a, b], urls, limit=3, delay=0.0)
            assert server.total_hits == 40
            assert server.max_concurrency(0) == 3  # reached, never passed
        for limiter in (a, b):
            stats = limiter.stats()
            assert stats.shared
            assert stats.shared_acquires == 20
            assert stats.held == 0
    finally:
        await a.close()
        await b.close()
        await _cleanup(redis_url, unique_name)


async def test_spacing_holds_across_workers(redis_url: str, unique_name: str) -> None:
    a = RedisLimiter(redis_url, prefix=unique_name)
    b = RedisLimiter(redis_url, prefix=unique_name)
    try:
        with ScrapeServer(ports=1) as server:
            urls = [server.url(0, f"/page/{i}?size=64") for i in range(12)]
            await _fetch_all([a, b], urls, limit=10, delay=0.1)
            times = sorted(t for t, _ in server.arrivals(0))
        assert len(times) == 12
        # 11 gaps of 0.1 s, scheduled on Redis's clock; the loopback adds only jitter.
        assert times[-1] - times[0] >= 11 * 0.1 * 0.9
    finally:
        await a.close()
        await b.close()
        await _cleanup(redis_url, unique_name)


async def test_dead_workers_leases_expire(redis_url: str, unique_name: str) -> None:
    import redis.asyncio as aioredis

    limiter = RedisLimiter(redis_url, prefix=unique_name)
    slots = f"{unique_name}:{{p}}:slots"
    client = aioredis.Redis.from_url(redis_url)
    try:
        # Two leases left by a worker that died: nobody renews them, nobody releases them.
        seconds, micros = await client.time()
        now = seconds + micros / 1e6
        await client.zadd(slots, {"dead:1": now + 1.0, "dead:2": now + 1.0})
        started = time.monotonic()
        lease = await limiter.acquire("p", 2, 0.0)
        waited = time.monotonic() - started
        assert 0.7 <= waited <= 2.0
        assert set(await client.zrange(slots, 0, -1)) == {lease.token.encode()}
        await limiter.release("p", lease)
    finally:
        await limiter.close()
        await client.aclose()
        await _cleanup(redis_url, unique_name)


async def test_live_worker_renews_its_leases(redis_url: str, unique_name: str) -> None:
    a = RedisLimiter(redis_url, prefix=unique_name, lease=0.6)
    b = RedisLimiter(redis_url, prefix=unique_name, lease=0.6)
    try:
        held = await a.acquire("p", 1, 0.0)
        await _still_waiting(b.acquire("p", 1, 0.0), 1.5)  # 2.5 leases long
        assert a.stats().renewals >= 2
        await a.release("p", held)
        started = time.monotonic()
        lease = await asyncio.wait_for(b.acquire("p", 1, 0.0), 2.0)
        assert time.monotonic() - started < 0.5
        await b.release("p", lease)
    finally:
        await a.close()
        await b.close()
        await _cleanup(redis_url, unique_name)


async def test_cancelled_acquire_leaves_no_slot_behind(redis_url: str, unique_name: str) -> None:
    import redis.asyncio as aioredis

    a = RedisLimiter(redis_url, prefix=unique_name)
    b = RedisLimiter(redis_url, prefix=unique_name)
    client = aioredis.Redis.from_url(redis_url)
    try:
        held = await a.acquire("p", 1, 0.0)
        await _still_waiting(b.acquire("p", 1, 0.0), 0.3)
        await a.release("p", held)
        lease = await asyncio.wait_for(a.acquire("p", 1, 0.0), 2.0)
        await a.release("p", lease)
        await a.close()
        await b.close()
        assert await client.zcard(f"{unique_name}:{{p}}:slots") == 0
    finally:
        await a.close()
        await b.close()
        await client.aclose()
        await _cleanup(redis_url, unique_name)


async def test_one_workers_429_slows_every_worker(redis_url: str, unique_name: str) -> None:
    import redis.asyncio as aioredis

    a = RedisLimiter(redis_url, prefix=unique_name)
    b = RedisLimiter(redis_url, prefix=unique_name)
    client = aioredis.Redis.from_url(redis_url)
    try:
        lease = await a.acquire("p", 4, 0.0)
        await a.release("p", lease)
        started = time.monotonic()
        await a.report("p", 429, 0.6)
        state = await client.hgetall(f"{unique_name}:{{p}}:state")
        assert int(state[b"cap"]) == 2  # halved for everyone
        first = await b.acquire("p", 4, 0.0)
        assert time.monotonic() - started >= 0.55  # B waits out A's Retry-After
        second = await b.acquire("p", 4, 0.0)
        await _still_waiting(b.acquire("p", 4, 0.0), 0.3)  # only 2 of 4 slots now
        for held in (first, second):
            await b.release("p", held)
            await b.report("p", 200, None)
        for _ in range(10):  # successes undo the slow-down step by step, for everyone
            held = await b.acquire("p", 4, 0.0)
            await b.release("p", held)
            await b.report("p", 200, None)
        await b.close()
        state = await client.hgetall(f"{unique_name}:{{p}}:state")
        assert int(state[b"cap"]) == 4
        assert int(state[b"throttles"]) == 1
    finally:
        await a.close()
        await b.close()
        await client.aclose()
        await _cleanup(redis_url, unique_name)


async def test_falls_back_to_local_limits_and_comes_back(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture, reliability: Any
) -> None:
    limiter = RedisLimiter(own_redis.url, timeout=0.5, retry_interval=0.3)
    try:
        lease = await limiter.acquire("p", 2, 0.0)
        assert lease.shared
        await limiter.release("p", lease)
        own_redis.stop()
        with caplog.at_level(logging.WARNING, logger="leadperf.scale"):
            first = await limiter.acquire("p", 2, 0.0)
            second = await limiter.acquire("p", 2, 0.0)
        assert not first.shared
        assert not second.shared
        stats = limiter.stats()
        assert not stats.shared
        assert stats.fallbacks == 1
        assert stats.local_acquires == 2
        assert "using local per-worker limits" in caplog.text
        # Local limits still hold: a third slot waits for a release (never unlimited).
        third = asyncio.ensure_future(limiter.acquire("p", 2, 0.0))
        await asyncio.sleep(0.2)
        assert not third.done()
        await limiter.release("p", first)
        await asyncio.wait_for(third, 1.0)
        await limiter.release("p", first)  # twice: must not free a second slot
        fourth = asyncio.ensure_future(limiter.acquire("p", 2, 0.0))
        await asyncio.sleep(0.2)
        assert not fourth.done()
        await limiter.release("p", second)
        await asyncio.wait_for(fourth, 1.0)
        second = fourth.result()
        await limiter.release("p", second)
        await limiter.release("p", third.result())

        own_redis.start()  # same port; the limiter finds it again after retry_interval
        deadline = time.monotonic() + 5
        while True:
            lease = await limiter.acquire("p", 2, 0.0)
            await limiter.release("p", lease)
            if lease.shared or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert lease.shared
        assert limiter.stats().shared
        reliability.record(
            "scale",
            "the limiter's Redis stopped, then started again",
            "local per-worker limits while it is down (logged, in stats), shared again after",
            f"fallbacks={stats.fallbacks}, local acquires={stats.local_acquires}, a third "
            "acquire over limit 2 waited for a release; shared again once Redis answered",
        )
    finally:
        await limiter.close()


async def test_flushed_script_cache_is_repaired(own_redis: OwnRedis) -> None:
    import redis.asyncio as aioredis

    limiter = RedisLimiter(own_redis.url)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        await limiter.release("p", await limiter.acquire("p", 2, 0.0))
        await client.script_flush()
        lease = await limiter.acquire("p", 2, 0.0)
        assert lease.shared
        await limiter.release("p", lease)
        assert limiter.stats().fallbacks == 0
    finally:
        await limiter.close()
        await client.aclose()


async def test_under_one_round_trip_per_request_under_load(
    redis_url: str, unique_name: str
) -> None:
    limiter = RedisLimiter(redis_url, prefix=unique_name)
    try:

        async def one(i: int) -> None:
            platform = f"p{i % 4}"
            lease = await limiter.acquire(platform, 100, 0.0)
            await asyncio.sleep(0)
            await limiter.release(platform, lease)
            await limiter.report(platform, 200, None)

        await asyncio.gather(*(one(i) for i in range(400)))
        await limiter.close()
        stats = limiter.stats()
        assert stats.acquires == 400
        assert stats.releases == 400
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        held = [await client.zcard(f"{unique_name}:{{p{k}}}:slots") for k in range(4)]
        await client.aclose()
        assert held == [0, 0, 0, 0]  # every release reached Redis
        assert 400 <= stats.commands <= 800  # releases ride on acquires where they can
        assert stats.round_trips_per_acquire < 1.0
    finally:
        await limiter.close()
        await _cleanup(redis_url, unique_name)


def test_keys_of_a_platform_share_one_cluster_slot() -> None:
    from redis.crc import key_slot

    limiter = RedisLimiter("redis://127.0.0.1:1/0")
    for platform in ("example.com", "shop.example.com:8443", "a{b}c", "", "}{"):
        slots, state = limiter._keys(platform)
        assert key_slot(slots.encode()) == key_slot(state.encode())
    assert limiter._keys("example.com")[0] == "leadperf:limit:{example.com}:slots"


async def test_bad_arguments_and_closed_limiter(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="lease"):
        RedisLimiter(redis_url, lease=0)
    with pytest.raises(ConfigError, match="redis"):
        RedisLimiter("http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="redis"):
        RedisLimiter(42)
    limiter = RedisLimiter("redis://:s3cret@127.0.0.1:6379/15")
    assert "s3cret" not in repr(limiter)
    with pytest.raises(ConfigError, match="limit"):
        await limiter.acquire("p", 0, 0.0)
    with pytest.raises(ConfigError, match="delay"):
        await limiter.acquire("p", 1, -1.0)
    with pytest.raises(ConfigError, match="lease"):
        await limiter.release("p", object())
    await limiter.close()
    await limiter.close()  # idempotent
    with pytest.raises(ClosedError):
        await limiter.acquire("p", 1, 0.0)


async def test_unreachable_from_the_start_never_means_unlimited() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    try:
        leases = [await limiter.acquire("p", 1, 0.0)]
        waiting = asyncio.ensure_future(limiter.acquire("p", 1, 0.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await limiter.release("p", leases[0])
        lease = await asyncio.wait_for(waiting, 1.0)
        assert isinstance(lease, Lease)
        assert not lease.shared
        assert limiter.stats().last_error == "ConnectionError"
    finally:
        await limiter.close()


# -- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture
def own_cluster() -> Any:
    from scale_worker import OwnCluster

    cluster = OwnCluster(3).start()
    yield cluster
    cluster.close()


async def test_limits_and_dedup_on_a_redis_cluster(own_cluster: Any, reliability: Any) -> None:
    from redis.asyncio import RedisCluster

    from leadperf.scale import DedupSet

    platforms = [f"shop{i}.example" for i in range(6)]
    probe = RedisCluster.from_url(own_cluster.url)
    a = RedisLimiter(own_cluster.url, cluster=True)
    b = RedisLimiter(own_cluster.url, cluster=True)
    dedups = [DedupSet.from_url(own_cluster.url, cluster=True, name="c") for _ in range(2)]
    try:
        await probe.initialize()
        slots = {p: probe.keyslot(a._keys(p)[0]) for p in platforms}
        nodes: set[str | int] = set()  # redis-py types a node's port as str | int
        for p in platforms:
            owner = probe.get_node_from_key(a._keys(p)[0])
            assert owner is not None, f"a shard owns {p}'s keys"
            nodes.add(owner.port)
        assert len(nodes) >= 2, "the platforms' keys spread over several shards"
        assert all(probe.keyslot(a._keys(p)[1]) == slots[p] for p in platforms)

        holding = dict.fromkeys(platforms, 0)
        most = dict.fromkeys(platforms, 0)

        async def one(i: int) -> None:
            limiter, platform = (a, b)[i % 2], platforms[i % 6]
            lease = await limiter.acquire(platform, 2, 0.0)
            holding[platform] += 1
            most[platform] = max(most[platform], holding[platform])
            await asyncio.sleep(0.01)
            holding[platform] -= 1
            await limiter.release(platform, lease)

        await asyncio.gather(*(one(i) for i in range(240)))
        assert set(most.values()) == {2}  # reached on every shard, never passed

        await a.report(platforms[0], 429, None)
        state = await probe.hgetall(a._keys(platforms[0])[1])
        assert int(state[b"cap"]) == 1

        await probe.script_flush()  # every primary forgets the scripts
        lease = await b.acquire(platforms[3], 2, 0.0)
        assert lease.shared
        await b.release(platforms[3], lease)
        assert a.stats().fallbacks == b.stats().fallbacks == 0

        urls = [f"http://{platforms[i % 6]}/item/{i}" for i in range(300)]
        flags = await asyncio.gather(*(d.add_many(urls) for d in dedups))
        assert [x or y for x, y in zip(*flags, strict=True)] == [True] * 300
        assert not any(x and y for x, y in zip(*flags, strict=True))
        reliability.record(
            "scale",
            "a 3-shard Redis Cluster (limiter and dedup), scripts flushed on every primary",
            "hash-tagged keys keep each platform on one slot; limits and dedup hold",
            f"platform keys on {len(nodes)} shards; max held per platform "
            f"{sorted(set(most.values()))} for limit 2; 300 URLs offered by 2 sets, each "
            "won once; acquires after SCRIPT FLUSH reloaded the scripts, no fallback",
        )
    finally:
        await a.close()
        await b.close()
        for d in dedups:
            await d.close()
        await probe.aclose()
