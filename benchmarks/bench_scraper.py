"""Scraper benchmark: AsyncScraper.scrape_batch on each engine vs plain httpx and aiohttp loops.

Engines: ``native`` (leadperf's own HTTP/1.1 engine, the default), ``aiohttp`` and ``httpx``.

Two runs against the same local keep-alive server (tests/scrape_server.py, started in its
own process so only the client's CPU is measured, with time.process_time):

- fast:     10 KB pages, no added latency, concurrency 50
- latency:  10 KB pages, the server adds 50 ms, concurrency 200 (ceiling 200 / 0.05 = 4000/s)

Prints a markdown table of requests/s and client CPU microseconds per request.

    python3 benchmarks/bench_scraper.py [--requests 10000] [--latency-requests 10000]

Rows: scrape_batch keeps every result (body and headers) in memory, as its contract says;
the plain aiohttp loop drops each body once counted. Two more rows make the comparison
fair both ways: scrape_iter (results consumed and dropped, the 100K-URL path) and the plain
aiohttp loop keeping every body and its raw headers in input order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from leadperf.scraper import AsyncScraper

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "scrape_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ready" not in line:
        proc.kill()
        raise RuntimeError("benchmark server did not start")
    return proc, f"http://127.0.0.1:{port}"


Runner = Callable[[list[str], int], Coroutine[Any, Any, int]]
DEFAULT = "scrape_batch (engine=native, default)"


async def plain_httpx(urls: list[str], concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(url: str) -> int:
            async with sem:
                r = await client.get(url)
                return len(r.content) if r.status_code == 200 else 0

        return sum(1 for n in await asyncio.gather(*(one(u) for u in urls)) if n)


async def plain_aiohttp(urls: list[str], concurrency: int) -> int:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one(url: str) -> int:
            async with sem, session.get(url) as r:
                body = await r.read()
                return len(body) if r.status == 200 else 0

        return sum(1 for n in await asyncio.gather(*(one(u) for u in urls)) if n)


async def plain_aiohttp_kept(urls: list[str], concurrency: int) -> int:
    """The plain aiohttp loop doing scrape_batch's work: every body and header kept, in order."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30.0)
    kept: list[tuple[int, bytes, Any] | None] = [None] * len(urls)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one(index: int, url: str) -> None:
            async with sem, session.get(url) as r:
                kept[index] = (r.status, await r.read(), r.raw_headers)

        await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))
    return sum(1 for k in kept if k is not None and k[0] == 200 and k[1])


def scraper_runner(engine: str) -> Runner:
    async def run(urls: list[str], concurrency: int) -> int:
        async with AsyncScraper(
            max_concurrent=concurrency, max_connections=concurrency, timeout=30.0, engine=engine
        ) as scraper:
            results = await scraper.scrape_batch(urls)
        return sum(1 for r in results if r.ok and len(r.content) > 0)

    return run


def scraper_iter_runner(engine: str) -> Runner:
    async def run(urls: list[str], concurrency: int) -> int:
        ok = 0
        async with AsyncScraper(
            max_concurrent=concurrency, max_connections=concurrency, timeout=30.0, engine=engine
        ) as scraper:
            async for result in scraper.scrape_iter(urls):
                ok += result.ok and len(result.content) > 0
        return ok

    return run


def measure(runner: Runner, base: str, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    # Warm up imports and code paths; the measured run opens its own connections.
    asyncio.run(runner([f"{base}/page/warm{tag}{i}" for i in range(200)], concurrency))
    urls = [f"{base}/page/{tag}{i}" for i in range(n)]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    ok = asyncio.run(runner(urls, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if ok != n:
        raise RuntimeError(f"{tag}: only {ok} of {n} requests succeeded")
    return n / wall, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description="AsyncScraper vs plain httpx / aiohttp")
    parser.add_argument("--requests", type=int, default=10_000, help="GETs per fast run")
    parser.add_argument(
        "--latency-requests", type=int, default=10_000, help="GETs per latency-bound run"
    )
    parser.add_argument(
        "--httpx-requests",
        type=int,
        default=600,
        help="GETs for the two httpx rows (httpcore's pool is 10-60x slower)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the aiohttp rows (best kept)"
    )
    args = parser.parse_args()

    runners: list[tuple[str, Runner, bool]] = [
        (DEFAULT, scraper_runner("native"), False),
        ("plain aiohttp.ClientSession + semaphore", plain_aiohttp, False),
        ("scrape_iter (engine=native; results not kept)", scraper_iter_runner("native"), False),
        ("plain aiohttp, keeping bodies like scrape_batch", plain_aiohttp_kept, False),
        ("scrape_batch (engine=aiohttp)", scraper_runner("aiohttp"), False),
        ("scrape_batch (engine=httpx)", scraper_runner("httpx"), True),
        ("plain httpx.AsyncClient + semaphore", plain_httpx, True),
    ]
    scenarios = [
        ("fast: 10 KB, concurrency 50", 0.0, 50, args.requests),
        ("latency-bound: 10 KB + 50 ms, concurrency 200", 0.05, 200, args.latency_requests),
    ]
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, ", end="")
    print(f"httpx {httpx.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    best: dict[tuple[str, str], tuple[int, float, float]] = {}
    tag = 0
    for name, delay, concurrency, n in scenarios:
        proc, base = start_server(delay)
        try:
            for round_ in range(args.rounds):
                for label, runner, is_httpx in runners:
                    if is_httpx and round_ > 0:
                        continue  # one round: a slow client, and far from the others
                    count = args.httpx_requests if is_httpx else n
                    tag += 1
                    rps, cpu_us = measure(runner, base, count, concurrency, f"r{tag}x")
                    print(
                        f"  {name} | {label} | round {round_ + 1}: {rps:,.0f} req/s, "
                        f"{cpu_us:,.0f} us CPU/req",
                        flush=True,
                    )
                    old = best.get((name, label))
                    if old is None:
                        best[(name, label)] = (count, rps, cpu_us)
                    else:
                        best[(name, label)] = (count, max(old[1], rps), min(old[2], cpu_us))
        finally:
            proc.terminate()
            proc.wait(10)
    print()
    print("| run | client | requests | requests/s | client CPU us/request |")
    print("|---|---|---:|---:|---:|")
    for (name, label), (count, rps, cpu_us) in best.items():
        print(f"| {name} | {label} | {count:,} | {rps:,.0f} | {cpu_us:,.0f} |")
    print()
    targets: list[tuple[str, str, str, bool]] = []
    for name, _, concurrency, _ in scenarios:
        speed = {label: best[(name, label)][1] for label, _, _ in runners}
        ours, aio, it, kept, on_aio, _, plain = (speed[label] for label, _, _ in runners)
        line = (
            f"- {name}: scrape_batch = {ours / aio:.2f}x plain aiohttp "
            f"({ours / kept:.2f}x the loop keeping bodies), {ours / plain:.1f}x plain httpx; "
            f"scrape_iter = {it / aio:.2f}x plain aiohttp; "
            f"scrape_batch on the aiohttp engine = {on_aio / aio:.2f}x plain aiohttp"
        )
        short = name.split(":")[0]
        targets.append(
            (
                f"{short}: scrape_batch / plain aiohttp",
                f"{ours / aio:.2f}x",
                ">= 0.8x",
                ours / aio >= 0.8,
            )
        )
        targets.append(
            (
                f"{short}: scrape_batch / plain httpx",
                f"{ours / plain:.1f}x",
                ">= 10x",
                ours / plain >= 10,
            )
        )
        if "latency" in name:
            ceiling = concurrency / 0.05
            line += f"; of the {ceiling:,.0f}/s ceiling: scrape_batch {ours / ceiling:.2f}x, "
            line += f"scrape_iter {it / ceiling:.2f}x, plain aiohttp {aio / ceiling:.2f}x"
            targets.append(
                (
                    f"{short}: scrape_batch / ceiling {ceiling:,.0f}/s",
                    f"{ours / ceiling:.2f}x",
                    ">= 0.9x",
                    ours / ceiling >= 0.9,
                )
            )
        print(line)
    print()
    print("| target | measured | wanted | met |")
    print("|---|---:|---:|:---:|")
    for what, measured, wanted, met in targets:
        print(f"| {what} | {measured} | {wanted} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
