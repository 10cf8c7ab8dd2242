"""Caches side by side with their nearest peers, in one process, on the same 1 KB values.

Run: python3 benchmarks/bench_cache.py [--seconds 0.2] [--rounds 10]

Needs the local Redis (LEADPERF_TEST_REDIS_URL, default redis://127.0.0.1:6379/15) and
PostgreSQL (LEADPERF_TEST_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test)
plus the bench extras (cachetools, cashews, aiocache). Each case runs for a fixed time in
every round; cases are interleaved round by round and the best round is kept, which
filters out noise from other work on a shared machine; target ratios use the median call
time of each sequential case, the steadiest figure on a busy machine. Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

REDIS_URL = os.environ.get("LEADPERF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "LEADPERF_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
N_KEYS = 1000
VALUE = os.urandom(1024)  # 1 KB; random, so no codec compresses it and all store the same bytes
SIGN_KEY = os.urandom(32)
KEYS = [f"k{i}" for i in range(N_KEYS)]

Op = Callable[[int], Awaitable[Any]]


async def rate_seq(op: Op, seconds: float) -> tuple[float, list[float]]:
    """Ops per second of ``op`` called back to back, and each call's latency (s)."""
    lat: list[float] = []
    n = 0
    clock = time.perf_counter
    end = clock() + seconds
    start = clock()
    while True:
        t0 = clock()
        await op(n)
        t1 = clock()
        lat.append(t1 - t0)
        n += 1
        if t1 >= end:
            break
    return n / (clock() - start), lat


async def rate_tasks(op: Op, seconds: float, tasks: int) -> float:
    """Ops per second with ``tasks`` concurrent callers."""
    end = time.perf_counter() + seconds
    counts = [0] * tasks

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < end:
            await op(i)
            counts[w] += 1
            i += tasks

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return sum(counts) / (time.perf_counter() - start)


def rate_sync(op: Callable[[int], Any], seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for _ in range(1000):
            op(n)
            n += 1
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - start)


class Case:
    def __init__(
        self,
        name: str,
        op: Any,
        *,
        kind: str = "seq",
        keys_per_op: int = 1,
        tasks: int = 1,
    ) -> None:
        self.name = name
        self.op = op
        self.kind = kind
        self.keys_per_op = keys_per_op
        self.tasks = tasks
        self.best = 0.0
        self.p50s: list[float] = []

    async def run(self, seconds: float) -> None:
        if self.kind == "sync":
            r = rate_sync(self.op, seconds)
        elif self.kind == "tasks":
            r = await rate_tasks(self.op, seconds, self.tasks)
        else:
            r, lat = await rate_seq(self.op, seconds)
            self.p50s.append(statistics.median(lat))
        self.best = max(self.best, r * self.keys_per_op)

    @property
    def p50_ms(self) -> float | None:
        return min(self.p50s) * 1000 if self.p50s else None


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.2, help="time per case per round")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    cleanups: list[Callable[[], Awaitable[Any]]] = []
    try:
        await run(args, cleanups)
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()


async def run(args: argparse.Namespace, cleanups: list[Callable[[], Awaitable[Any]]]) -> None:

    import cachetools
    import psycopg_pool
    import redis.asyncio as aioredis
    from aiocache import Cache as AioCache
    from aiocache.serializers import PickleSerializer
    from cashews import Cache as CashewsCache

    from leadperf import Settings
    from leadperf.cache import (
        Codec,
        MemoryCache,
        PostgresCache,
        RedisCache,
        SqliteCache,
        TieredCache,
    )

    settings = Settings()
    ns = f"bench{uuid.uuid4().hex[:8]}"
    table = f"bench_{uuid.uuid4().hex[:8]}"
    sqlite_path = f"/tmp/{table}.db"
    batches = [KEYS[i : i + 100] for i in range(0, N_KEYS, 100)]

    # -- memory peers --
    ttl_cache: cachetools.TTLCache[str, bytes] = cachetools.TTLCache(maxsize=10_000, ttl=3600)
    for k in KEYS:
        ttl_cache[k] = VALUE
    cashews_mem = CashewsCache()
    cashews_mem.setup("mem://")
    aio_mem = AioCache(AioCache.MEMORY)
    mem = MemoryCache(settings=settings)
    for k in KEYS:
        await cashews_mem.set(k, VALUE, expire=3600)
        await aio_mem.set(k, VALUE, ttl=3600)
    await mem.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)

    # -- redis peers --
    raw_redis = aioredis.Redis.from_url(REDIS_URL)
    cashews_redis = CashewsCache()
    cashews_redis.setup(REDIS_URL)
    host_port = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    aio_redis = AioCache(
        AioCache.REDIS,
        endpoint=host_port.split(":")[0],
        port=int(host_port.split(":")[1]),
        db=int(REDIS_URL.rsplit("/", 1)[1] or 0),
        namespace=f"{ns}aio",
        serializer=PickleSerializer(),
    )
    rc = RedisCache(REDIS_URL, namespace=ns, settings=settings)
    # Signed twins: same data, one HMAC-SHA256 per entry written and read.
    signer = Codec(sign_key=SIGN_KEY)
    rc_signed = RedisCache(REDIS_URL, namespace=ns + "s", codec=signer, settings=settings)
    tiered = TieredCache(MemoryCache(settings=settings), RedisCache(REDIS_URL, namespace=ns))
    async with raw_redis.pipeline(transaction=False) as pipe:
        for k in KEYS:
            pipe.set(f"{ns}raw:{k}", VALUE, ex=3600)
        await pipe.execute()
    for k in KEYS:
        await cashews_redis.set(f"{ns}cw:{k}", VALUE, expire=3600)
        await aio_redis.set(k, VALUE, ttl=3600)
    await rc.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)
    await rc_signed.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)
    await tiered.get_many(KEYS)  # fill the local tier

    async def redis_cleanup() -> None:
        await rc.clear()
        await rc_signed.clear()
        await rc_signed.close()
        async for key in raw_redis.scan_iter(match=f"{ns}*", count=1000):
            await raw_redis.unlink(key)
        await raw_redis.aclose()
        await rc.close()
        await tiered.close()
        await aio_redis.close()
        await cashews_redis.close()

    cleanups.append(redis_cleanup)

    # -- postgres peers --
    pg = PostgresCache(DATABASE_URL, table=table, namespace=ns, settings=settings)
    raw_pool = psycopg_pool.AsyncConnectionPool(
        DATABASE_URL, min_size=2, max_size=10, open=False, kwargs={"autocommit": True}
    )
    await raw_pool.open(wait=True)
    q_one = f'SELECT value FROM "{table}" WHERE key = %s'
    q_any = f'SELECT key, value FROM "{table}" WHERE key = ANY(%s)'

    async def pg_cleanup() -> None:
        await pg.close()
        async with raw_pool.connection() as conn:
            await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await raw_pool.close()

    cleanups.append(pg_cleanup)
    await pg.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)

    # -- sqlite --
    lite = SqliteCache(sqlite_path, namespace=ns, settings=settings)
    await lite.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)
    lite_signed = SqliteCache(sqlite_path, namespace=ns + "s", codec=signer, settings=settings)
    await lite_signed.set_many(dict.fromkeys(KEYS, VALUE), ttl=3600)

    async def lite_cleanup() -> None:
        await lite.close()
        await lite_signed.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(sqlite_path + suffix):
                os.remove(sqlite_path + suffix)

    cleanups.append(lite_cleanup)

    # Correctness before speed: every contender returns the same value.
    assert ttl_cache[KEYS[5]] == VALUE
    assert await cashews_mem.get(KEYS[5]) == VALUE
    assert await aio_mem.get(KEYS[5]) == VALUE
    assert await mem.get(KEYS[5]) == VALUE
    assert await raw_redis.get(f"{ns}raw:{KEYS[5]}") == VALUE
    assert await cashews_redis.get(f"{ns}cw:{KEYS[5]}") == VALUE
    assert await aio_redis.get(KEYS[5]) == VALUE
    assert await rc.get(KEYS[5]) == VALUE
    assert len(await rc.get_many(batches[0])) == 100
    assert await tiered.get(KEYS[5]) == VALUE
    assert await pg.get(KEYS[5]) == VALUE
    assert len(await pg.get_many(batches[0])) == 100
    assert await lite.get(KEYS[5]) == VALUE
    assert await lite_signed.get(KEYS[5]) == VALUE
    assert await rc_signed.get(KEYS[5]) == VALUE
    plain_codec = Codec()
    encoded, signed = plain_codec.encode(VALUE, "k"), signer.encode(VALUE, "k")
    assert signer.decode(signed, "k") == plain_codec.decode(encoded, "k") == VALUE

    async def raw_pg_one(i: int) -> Any:
        async with raw_pool.connection() as conn:
            cur = await conn.execute(q_one, (f"{ns}:{KEYS[i % N_KEYS]}",))
            return await cur.fetchone()

    async def raw_pg_any(i: int) -> Any:
        async with raw_pool.connection() as conn:
            cur = await conn.execute(q_any, ([f"{ns}:{k}" for k in batches[i % 10]],))
            return await cur.fetchall()

    assert (await raw_pg_one(5))[0][1:] == VALUE  # stored form: header byte + bytes
    assert len(await raw_pg_any(0)) == 100

    raw_keys = [f"{ns}raw:{k}" for k in KEYS]
    raw_batches = [raw_keys[i : i + 100] for i in range(0, N_KEYS, 100)]
    cw_keys = [f"{ns}cw:{k}" for k in KEYS]

    cases = {
        "ttl": Case(
            "cachetools.TTLCache get (sync)", lambda i: ttl_cache[KEYS[i % N_KEYS]], kind="sync"
        ),
        "cw_mem": Case("cashews mem:// get", lambda i: cashews_mem.get(KEYS[i % N_KEYS])),
        "aio_mem": Case("aiocache memory get", lambda i: aio_mem.get(KEYS[i % N_KEYS])),
        "mem": Case("**MemoryCache.get**", lambda i: mem.get(KEYS[i % N_KEYS])),
        "lite": Case("**SqliteCache.get**", lambda i: lite.get(KEYS[i % N_KEYS])),
        "lite_s": Case("**SqliteCache.get, signed**", lambda i: lite_signed.get(KEYS[i % N_KEYS])),
        "lite_set": Case("**SqliteCache.set**", lambda i: lite.set(KEYS[i % N_KEYS], VALUE)),
        "lite_sset": Case(
            "**SqliteCache.set, signed**", lambda i: lite_signed.set(KEYS[i % N_KEYS], VALUE)
        ),
        "enc": Case(
            "Codec.encode 1 KB (sync)", lambda i: plain_codec.encode(VALUE, "k"), kind="sync"
        ),
        "enc_s": Case(
            "Codec.encode 1 KB, signed (sync)", lambda i: signer.encode(VALUE, "k"), kind="sync"
        ),
        "dec": Case(
            "Codec.decode 1 KB (sync)", lambda i: plain_codec.decode(encoded, "k"), kind="sync"
        ),
        "dec_s": Case(
            "Codec.decode 1 KB, signed (sync)", lambda i: signer.decode(signed, "k"), kind="sync"
        ),
        "raw_get": Case("redis.asyncio GET", lambda i: raw_redis.get(raw_keys[i % N_KEYS])),
        "rc_get": Case("**RedisCache.get**", lambda i: rc.get(KEYS[i % N_KEYS])),
        "rc_sget": Case("**RedisCache.get, signed**", lambda i: rc_signed.get(KEYS[i % N_KEYS])),
        "rc_set": Case("**RedisCache.set**", lambda i: rc.set(KEYS[i % N_KEYS], VALUE)),
        "rc_sset": Case(
            "**RedisCache.set, signed**", lambda i: rc_signed.set(KEYS[i % N_KEYS], VALUE)
        ),
        "raw_get50": Case(
            "redis.asyncio GET, 50 tasks",
            lambda i: raw_redis.get(raw_keys[i % N_KEYS]),
            kind="tasks",
            tasks=50,
        ),
        "rc_get50": Case(
            "**RedisCache.get, 50 tasks**",
            lambda i: rc.get(KEYS[i % N_KEYS]),
            kind="tasks",
            tasks=50,
        ),
        "cw_redis": Case("cashews redis:// get", lambda i: cashews_redis.get(cw_keys[i % N_KEYS])),
        "aio_redis": Case("aiocache redis get", lambda i: aio_redis.get(KEYS[i % N_KEYS])),
        "raw_mget": Case(
            "redis.asyncio MGET 100 (keys/s)",
            lambda i: raw_redis.mget(raw_batches[i % 10]),
            keys_per_op=100,
        ),
        "rc_many": Case(
            "**RedisCache.get_many(100)** (keys/s)",
            lambda i: rc.get_many(batches[i % 10]),
            keys_per_op=100,
        ),
        "tier_hit": Case("**TieredCache.get, local hit**", lambda i: tiered.get(KEYS[i % N_KEYS])),
        "raw_pg": Case("psycopg pool, PK lookup", raw_pg_one),
        "pg_get": Case("**PostgresCache.get**", lambda i: pg.get(KEYS[i % N_KEYS])),
        "raw_any": Case("psycopg pool, = ANY 100 (keys/s)", raw_pg_any, keys_per_op=100),
        "pg_many": Case(
            "**PostgresCache.get_many(100)** (keys/s)",
            lambda i: pg.get_many(batches[i % 10]),
            keys_per_op=100,
        ),
    }
    for c in cases.values():  # warm-up: connections, prepared statements
        await c.run(0.05)
        c.best, c.p50s = 0.0, []
    for _ in range(args.rounds):
        for c in cases.values():
            await c.run(args.seconds)

    # Ratios use each sequential case's median call time (keys per call / p50): on a
    # shared machine the median is far steadier than a whole round's throughput, which
    # one stall from another process can halve. The table shows both.
    b = {k: (c.keys_per_op / (c.p50_ms / 1000) if c.p50_ms else c.best) for k, c in cases.items()}
    targets = [
        ("MemoryCache.get / cashews mem get", b["mem"] / b["cw_mem"], 1.5),
        ("RedisCache.get / redis.asyncio GET", b["rc_get"] / b["raw_get"], 0.9),
        ("RedisCache.get / cashews redis get", b["rc_get"] / b["cw_redis"], 1.5),
        ("RedisCache.get_many(100) / MGET, per key", b["rc_many"] / b["raw_mget"], 0.8),
        ("PostgresCache.get_many(100) / = ANY, per key", b["pg_many"] / b["raw_any"], 0.8),
        ("TieredCache local hit / RedisCache.get", b["tier_hit"] / b["rc_get"], 20.0),
    ]
    pg_p50 = cases["pg_get"].p50_ms

    print(
        f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, 1 KB values, "
        f"best of {args.rounds} rounds x {args.seconds}s per case\n"
    )
    print("| case | ops/s, best round (keys/s for many) | p50 per call, ms | 1/p50 (keys/s) |")
    print("|---|---:|---:|---:|")
    for key, c in cases.items():
        p50 = f"{c.p50_ms:.4f}" if c.p50_ms is not None else ""
        at_p50 = f"{b[key]:,.0f}" if c.p50_ms is not None else ""
        print(f"| {c.name} | {c.best:,.0f} | {p50} | {at_p50} |")
    print("\n| target | measured | wanted | met |")
    print("|---|---:|---:|:---:|")
    for name, ratio, want in targets:
        print(f"| {name} | {ratio:.2f}x | >= {want}x | {'yes' if ratio >= want else 'NO'} |")
    assert pg_p50 is not None
    print(
        f"| PostgresCache.get p50 | {pg_p50:.3f} ms | < 0.5 ms | {'yes' if pg_p50 < 0.5 else 'NO'} |"
    )

    print("\n| signing cost (p50 per call) | unsigned, µs | signed, µs | added, µs |")
    print("|---|---:|---:|---:|")
    for label, plain_key, signed_key in (
        ("SqliteCache.get", "lite", "lite_s"),
        ("SqliteCache.set", "lite_set", "lite_sset"),
        ("RedisCache.get", "rc_get", "rc_sget"),
        ("RedisCache.set", "rc_set", "rc_sset"),
    ):
        u, sg = cases[plain_key].p50_ms, cases[signed_key].p50_ms
        assert u is not None
        assert sg is not None
        print(f"| {label} | {u * 1000:.1f} | {sg * 1000:.1f} | {(sg - u) * 1000:+.1f} |")
    for label, plain_key, signed_key in (
        ("Codec.encode 1 KB", "enc", "enc_s"),
        ("Codec.decode 1 KB", "dec", "dec_s"),
    ):
        u_us, s_us = 1e6 / cases[plain_key].best, 1e6 / cases[signed_key].best
        print(f"| {label} (best round) | {u_us:.2f} | {s_us:.2f} | {s_us - u_us:+.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
