"""Scraper benchmark: AsyncScraper.scrape_batch on each engine vs plain httpx and aiohttp loops.

Engines: ``aiohttp`` (the default), ``native`` (leadperf's own HTTP/1.1 engine, opt-in)
and ``httpx``. A last table times the per-request checks every engine pays (request
validation, the head checks, the capped body read) against the client CPU per request.

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
PLAIN_AIOHTTP = "plain aiohttp.ClientSession + semaphore"
ITER = "scrape_iter (engine=aiohttp; results not kept)"
KEPT = "plain aiohttp, keeping bodies like scrape_batch"
NATIVE = "scrape_batch (engine=native, opt-in)"
HTTPX = "scrape_batch (engine=httpx)"
PLAIN_HTTPX = "plain httpx.AsyncClient + semaphore"
DEFAULT = "scrape_batch (engine=aiohttp, default)"


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
            max_concurrent=concurrency,
            max_connections=concurrency,
            timeout=30.0,
            engine=engine,
            trust_env=False,
        ) as scraper:
            results = await scraper.scrape_batch(urls)
        return sum(1 for r in results if r.ok and len(r.content) > 0)

    return run


def scraper_iter_runner(engine: str) -> Runner:
    async def run(urls: list[str], concurrency: int) -> int:
        ok = 0
        async with AsyncScraper(
            max_concurrent=concurrency,
            max_connections=concurrency,
            timeout=30.0,
            engine=engine,
            trust_env=False,
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
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds of the aiohttp rows, order rotated each round (best kept)",
    )
    args = parser.parse_args()

    runners: list[tuple[str, Runner, bool]] = [
        (DEFAULT, scraper_runner("aiohttp"), False),
        (PLAIN_AIOHTTP, plain_aiohttp, False),
        (ITER, scraper_iter_runner("aiohttp"), False),
        (KEPT, plain_aiohttp_kept, False),
        (NATIVE, scraper_runner("native"), False),
        (HTTPX, scraper_runner("httpx"), True),
        (PLAIN_HTTPX, plain_httpx, True),
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
                # Each round starts with the next contender: the first run in a fresh
                # process pays the allocator's and the server's warm-up, so no contender
                # may always be the one that pays it.
                shift = round_ % len(runners)
                for label, runner, is_httpx in runners[shift:] + runners[:shift]:
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
    targets = report_targets(scenarios, best)
    checks = check_costs()
    default_cpu = best[(scenarios[0][0], DEFAULT)][2]
    print("| per-request check | us |")
    print("|---|---:|")
    for what, micros in checks.items():
        print(f"| {what} | {micros:.2f} |")
    share = sum(checks.values()) / default_cpu
    print(f"| all, against {default_cpu:.0f} us CPU per scrape_batch request | {share:.1%} |")
    print()
    targets.append(
        ("limits and validation cost (aiohttp engine)", f"{share:.1%}", "<= 5%", share <= 0.05)
    )
    print("| target | measured | wanted | met |")
    print("|---|---:|---:|:---:|")
    for what, measured, wanted, met in targets:
        print(f"| {what} | {measured} | {wanted} | {'yes' if met else 'NO'} |")


def report_targets(
    scenarios: list[tuple[str, float, int, int]],
    best: dict[tuple[str, str], tuple[int, float, float]],
) -> list[tuple[str, str, str, bool]]:
    """Print the ratios and return the target rows."""
    targets: list[tuple[str, str, str, bool]] = []

    def add(what: str, value: float, wanted: float, fmt: str = "{:.2f}x") -> None:
        targets.append((what, fmt.format(value), f">= {wanted}x", value >= wanted))

    for name, _, concurrency, _ in scenarios:
        speed = {label: best[(name, label)][1] for (run, label) in best if run == name}
        ours, aio, native = speed[DEFAULT], speed[PLAIN_AIOHTTP], speed[NATIVE]
        short = name.split(":")[0]
        print(
            f"- {name}: scrape_batch (aiohttp engine) = {ours / aio:.2f}x plain aiohttp "
            f"({ours / speed[KEPT]:.2f}x the loop keeping bodies), "
            f"{ours / speed[PLAIN_HTTPX]:.1f}x plain httpx; scrape_iter = "
            f"{speed[ITER] / aio:.2f}x; native engine = {native / aio:.2f}x plain aiohttp"
        )
        add(f"{short}: scrape_batch (aiohttp engine) / plain aiohttp", ours / aio, 0.9)
        if "latency" in name:
            ceiling = concurrency / 0.05
            add(f"{short}: native scrape_batch / ceiling {ceiling:,.0f}/s", native / ceiling, 0.9)
        else:
            add(f"{short}: native scrape_batch / plain aiohttp", native / aio, 2.0)
    return targets


def check_costs(rounds: int = 20_000) -> dict[str, float]:
    """Microseconds per request of each check the scraper and the aiohttp engine add."""
    from leadperf._scrape._aiohttp import _check_head
    from leadperf._scrape._request import DEFAULT_LIMITS, Request
    from leadperf._scrape._urls import check_request, check_url

    url = "http://127.0.0.1:8765/page/r123x4567"
    raw = (
        (b"Content-Length", b"10240"),
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Date", b"Wed, 02 Dec 2026 01:00:00 GMT"),
        (b"Server", b"bench"),
    )
    request = Request("GET", url, 30.0)

    def timed(func: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            func()
        return (time.perf_counter() - start) / rounds * 1e6

    return {
        "URL check (scheme, host)": timed(lambda: check_url(url)),
        "request check (method token, no control bytes)": timed(lambda: check_request("GET", url)),
        "head checks (size, count, framing) on 4 headers": timed(
            lambda: _check_head(url, raw, DEFAULT_LIMITS, 200, request)
        ),
    }


if __name__ == "__main__":
    main()
