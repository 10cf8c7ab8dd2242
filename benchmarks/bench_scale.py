"""Scale-out benchmark: what the shared RedisLimiter costs per request, and worker throughput.

Three tables, in one run:

1. Limiter overhead, one request at a time (p50/p99 of ``acquire`` and of the whole
   acquire + release, next to one plain Redis PING = one round trip), and under load
   (200 tasks over 8 platforms): Redis round trips and commands per request.
2. The ``limits`` library's moving-window ``hit`` (its Redis strategy, redis-py client),
   as the alternative for the spacing decision (skipped when ``limits`` is not installed).
3. Aggregate requests/s of 1, 2 and 4 worker processes, each an ``AsyncScraper`` with and
   without ``limiter=RedisLimiter`` (8 platforms, limit 32 each, no spacing), against
   one local keep-alive server process (tests/scrape_server.py).

    python3 benchmarks/bench_scale.py [--redis redis://127.0.0.1:6379/15] [--requests 4000]

Without ``--redis`` it starts a redis-server of its own on a free loopback port, so the
Redis CPU figure (INFO cpu, main thread) counts this benchmark only. With ``--redis`` it
uses keys under a fresh ``bench_scale_<random>`` prefix and deletes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "scrape_server.py"
sys.path.insert(0, str(ROOT / "tests"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def overhead(redis_url: str, prefix: str, n: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from leadperf.scale import RedisLimiter

    client = aioredis.Redis.from_url(redis_url)
    ping: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.ping()
        ping.append(time.perf_counter() - t0)
    await client.aclose()

    limiter = RedisLimiter(redis_url, prefix=prefix)
    acquire: list[float] = []
    pair: list[float] = []
    for _ in range(200):  # warm up: scripts loaded, connection open
        await limiter.release("warm", await limiter.acquire("warm", 1000, 0.0))
    for _ in range(n):
        t0 = time.perf_counter()
        lease = await limiter.acquire("p", 1000, 0.0)
        t1 = time.perf_counter()
        await limiter.release("p", lease)
        await limiter.report("p", 200, None)
        await asyncio.sleep(0)  # let the queued release go out, as between real requests
        pair.append(time.perf_counter() - t0)
        acquire.append(t1 - t0)
    before = limiter.stats()

    async def task(i: int) -> None:
        for _ in range(20):
            platform = f"q{i % 8}"
            held = await limiter.acquire(platform, 1000, 0.0)
            await asyncio.sleep(0)
            await limiter.release(platform, held)
            await limiter.report(platform, 200, None)

    info = aioredis.Redis.from_url(redis_url)
    cpu0 = await info.info("cpu")
    t0 = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(200)))
    loaded_s = time.perf_counter() - t0
    cpu1 = await info.info("cpu")
    await info.aclose()
    redis_cpu = sum(
        float(cpu1[k]) - float(cpu0[k])
        for k in ("used_cpu_sys_main_thread", "used_cpu_user_main_thread")
    )
    await limiter.close()
    after = limiter.stats()
    loaded_requests = after.acquires - before.acquires
    return {
        "ping_p50_ms": pct(ping, 0.5) * 1e3,
        "acquire_p50_ms": pct(acquire, 0.5) * 1e3,
        "acquire_p99_ms": pct(acquire, 0.99) * 1e3,
        "pair_p50_ms": pct(pair, 0.5) * 1e3,
        "sequential_rt_per_request": before.round_trips / before.acquires,
        "loaded_requests": loaded_requests,
        "loaded_rt_per_request": (after.round_trips - before.round_trips) / loaded_requests,
        "loaded_cmds_per_request": (after.commands - before.commands) / loaded_requests,
        "loaded_decisions_per_s": loaded_requests / loaded_s,
        "redis_cpu_us_per_request": redis_cpu / loaded_requests * 1e6,
    }


async def dedup_cost(redis_url: str, prefix: str, n: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from leadperf.scale import DedupSet

    store = DedupSet.from_url(redis_url, name=prefix)
    urls = [f"https://shop{i % 50}.example/item/{i}?ref=bench" for i in range(n)]
    info = aioredis.Redis.from_url(redis_url)
    cpu0 = await info.info("cpu")
    t0 = time.perf_counter()
    for i in range(0, n, 500):
        await store.add_many(urls[i : i + 500])
    took = time.perf_counter() - t0
    cpu1 = await info.info("cpu")
    await info.aclose()
    await store.clear()  # type: ignore[attr-defined]
    await store.close()
    cpu = sum(
        float(cpu1[k]) - float(cpu0[k])
        for k in ("used_cpu_sys_main_thread", "used_cpu_user_main_thread")
    )
    return {"urls_per_s": n / took, "redis_cpu_us_per_url": cpu / n * 1e6}


async def limits_hit(redis_url: str, prefix: str, n: int) -> dict[str, Any] | None:
    try:
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter
    except ImportError:
        return None
    storage = RedisStorage(
        redis_url.replace("redis://", "async+redis://"),
        implementation="redispy",
        key_prefix=prefix + "_limits",
    )
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(1_000_000, 1)
    for _ in range(200):
        await limiter.hit(item, "warm")
    took: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await limiter.hit(item, "p")
        took.append(time.perf_counter() - t0)
    await storage.reset()
    return {"hit_p50_ms": pct(took, 0.5) * 1e3, "hit_p99_ms": pct(took, 0.99) * 1e3}


# -- worker processes ---------------------------------------------------------------------


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    if b"ready" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError("scrape_server did not start")
    return proc, port


def platform_of(url: str) -> str:
    return url.rsplit("/", 1)[1].split("-", 1)[0]  # /tiny/p3-123 -> p3


async def child(args: argparse.Namespace) -> None:
    from leadperf import AsyncScraper
    from leadperf.scale import RedisLimiter

    urls = [
        f"http://127.0.0.1:{args.port}/tiny/p{i % 8}-{args.index}-{i}" for i in range(args.count)
    ]
    limiter = RedisLimiter(args.redis, prefix=args.prefix) if args.limiter else None
    limits = {f"p{k}": 32 for k in range(8)}
    async with AsyncScraper(
        max_concurrent=32, limits=limits, platform_of=platform_of, limiter=limiter
    ) as scraper:
        await scraper.fetch(f"http://127.0.0.1:{args.port}/tiny/p0-warm")
        await asyncio.sleep(max(0.0, args.start_at - time.monotonic()))
        start = time.monotonic()
        results = await scraper.scrape_batch(urls)
        end = time.monotonic()
    stats = None
    if limiter is not None:
        await limiter.close()
        stats = limiter.stats()
    ok = sum(r.ok for r in results)
    print(
        json.dumps(
            {
                "start": start,
                "end": end,
                "ok": ok,
                "round_trips": stats.round_trips if stats else 0,
                "acquires": stats.acquires if stats else 0,
            }
        )
    )


def throughput(
    redis_url: str, prefix: str, port: int, total: int, procs: int, limiter: bool
) -> dict[str, Any]:
    start_at = time.monotonic() + 3.0 + procs * 0.5  # every child imported and warm by then
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", "--port", str(port), "--index", str(i)]
            + ["--count", str(total // procs), "--start-at", repr(start_at)]
            + ["--redis", redis_url, "--prefix", prefix]
            + (["--limiter"] if limiter else []),
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for i in range(procs)
    ]
    reports = []
    for c in children:
        out, _ = c.communicate(timeout=300)
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    begin = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    ok = sum(r["ok"] for r in reports)
    acquires = sum(r["acquires"] for r in reports)
    return {
        "procs": procs,
        "limiter": limiter,
        "ok": ok,
        "rps": ok / (end - begin),
        "rt_per_request": sum(r["round_trips"] for r in reports) / acquires if acquires else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis", default=None, help="a Redis URL (default: a redis-server of its own)"
    )
    parser.add_argument("--requests", type=int, default=4000, help="per throughput run")
    parser.add_argument("--overhead", type=int, default=3000, help="sequential acquires timed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limiter", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default=f"bench_scale_{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return

    own = None
    if args.redis is None:  # a server of our own: its CPU counters see only this benchmark
        from scale_worker import OwnRedis

        own = OwnRedis().start()
        args.redis = own.url
    try:
        run(args)
    finally:
        if own is not None:
            own.close()


def run(args: argparse.Namespace) -> None:
    o = asyncio.run(overhead(args.redis, args.prefix, args.overhead))
    lim = asyncio.run(limits_hit(args.redis, args.prefix, args.overhead))
    d = asyncio.run(dedup_cost(args.redis, args.prefix.replace("bench_scale_", "b"), 20_000))
    print("\n### RedisLimiter overhead (loopback Redis)\n")
    print("| measure | value |\n| --- | ---: |")
    print(f"| Redis PING p50 (one round trip) | {o['ping_p50_ms']:.3f} ms |")
    print(
        f"| acquire p50 / p99, one at a time | {o['acquire_p50_ms']:.3f} / {o['acquire_p99_ms']:.3f} ms |"
    )
    print(f"| acquire + release + report p50, one at a time | {o['pair_p50_ms']:.3f} ms |")
    print(f"| round trips per request, one at a time | {o['sequential_rt_per_request']:.2f} |")
    print(
        f"| round trips per request, 200 tasks over 8 platforms | {o['loaded_rt_per_request']:.3f} |"
    )
    print(f"| Redis commands per request, same load | {o['loaded_cmds_per_request']:.2f} |")
    print(f"| limiter decisions/s, same load, one process | {o['loaded_decisions_per_s']:,.0f} |")
    print(
        f"| Redis main-thread CPU per request, same load | {o['redis_cpu_us_per_request']:.1f} us |"
    )
    if lim is not None:
        print(
            f"| `limits` moving-window hit p50 / p99 | {lim['hit_p50_ms']:.3f} / {lim['hit_p99_ms']:.3f} ms |"
        )

    print(
        f"| DedupSet.add_many, chunks of 500: URLs/s / Redis CPU per URL | "
        f"{d['urls_per_s']:,.0f} / {d['redis_cpu_us_per_url']:.1f} us |"
    )

    server, port = start_server()
    rows = []
    try:
        for procs in (1, 2, 4):
            for limiter in (False, True):
                rows.append(
                    throughput(args.redis, args.prefix, port, args.requests, procs, limiter)
                )
    finally:
        server.kill()
        server.wait()
    print(f"\n### Worker processes against one local server ({args.requests} requests a run)\n")
    print("| processes | limiter | requests ok | requests/s | Redis round trips per request |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        rt = f"{r['rt_per_request']:.3f}" if r["limiter"] else "-"
        print(
            f"| {r['procs']} | {'RedisLimiter' if r['limiter'] else 'none'} | {r['ok']} "
            f"| {r['rps']:,.0f} | {rt} |"
        )

    import redis

    client = redis.Redis.from_url(args.redis)
    keys = list(client.scan_iter(match=args.prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    main()
