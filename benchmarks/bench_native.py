"""Native engine micro-benchmark: NativeEngine.request driven directly vs plain aiohttp.

Runs against the same local keep-alive server as bench_scraper.py (tests/scrape_server.py
in its own process, so only the client's CPU is counted with time.process_time):

- fast:     10 KB pages, no added latency, concurrency 50
- latency:  10 KB pages, the server adds 50 ms, concurrency 200 (ceiling 4000/s)

Rows: the native engine as it is (httptools parser, request checks, limits, incremental
decoding); the native engine as it was before its parser was replaced (``--before REV``,
default ``a5622da``: loaded from git, skipped when git or the revision is missing), to
price the hardening; plain ``aiohttp.ClientSession`` with a semaphore. Every body is read
and dropped once counted, the same way for every row.

Then two parser figures: httptools vs h11 on many small keep-alive responses (the fast
run's shape, parsing only), and 1 MiB of 1-byte chunks in one read through the engine.

    python3 benchmarks/bench_native.py [--requests 10000] [--rounds 3] [--before a5622da]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from leadperf._scrape._native import NativeEngine
from leadperf._scrape._request import Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scraper import start_server

ROOT = Path(__file__).resolve().parent.parent
Runner = Callable[[list[str], int], Coroutine[Any, Any, int]]


async def native(urls: list[str], concurrency: int) -> int:
    engine = NativeEngine(max_connections=concurrency, timeout=30.0, headers=None)
    sem = asyncio.Semaphore(concurrency)

    async def one(url: str) -> int:
        async with sem:
            r = await engine.request(Request("GET", url, 30.0))
            return len(r.content) if r.status_code == 200 else 0

    try:
        return sum(1 for n in await asyncio.gather(*(one(u) for u in urls)) if n)
    finally:
        await engine.aclose()


def load_before(rev: str) -> ModuleType | None:
    """The single-module native engine at ``rev``, or None if git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:src/leadperf/_scrape/_native.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "_native_before.py"
    path.write_bytes(source)
    name = "leadperf._scrape._native_before"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "leadperf._scrape"  # its relative imports resolve in leadperf
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def before_runner(module: ModuleType) -> Runner:
    async def run(urls: list[str], concurrency: int) -> int:
        engine = module.NativeEngine(max_connections=concurrency, timeout=30.0, headers=None)
        sem = asyncio.Semaphore(concurrency)

        async def one(url: str) -> int:
            async with sem:
                r = await engine.request("GET", url)
                return len(r.content) if r.status_code == 200 else 0

        try:
            return sum(1 for n in await asyncio.gather(*(one(u) for u in urls)) if n)
        finally:
            await engine.aclose()

    return run


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


def measure(runner: Runner, base: str, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    asyncio.run(runner([f"{base}/page/warm{tag}{i}" for i in range(200)], concurrency))
    urls = [f"{base}/page/{tag}{i}" for i in range(n)]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    ok = asyncio.run(runner(urls, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if ok != n:
        raise RuntimeError(f"{tag}: only {ok} of {n} requests succeeded")
    return n / wall, cpu / n * 1e6


def parser_figures(n: int) -> list[tuple[str, float]]:
    """Microseconds per small keep-alive response, parsing only: httptools, then h11."""
    import h11
    import httptools

    resp = (
        b"HTTP/1.1 200 OK\r\nDate: Wed, 02 Dec 2026 00:00:00 GMT\r\nServer: bench\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
    )

    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.parts.append(name)
            self.parts.append(value)

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            self.parts = []

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    start = time.perf_counter()
    for _ in range(n):
        parser.feed_data(resp)
        parser.get_status_code()
    fast = (time.perf_counter() - start) / n * 1e6

    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/", headers=[("Host", "bench")])
    start = time.perf_counter()
    for _ in range(n):
        conn.send(request)
        conn.send(h11.EndOfMessage())
        conn.receive_data(resp)
        while True:
            event = conn.next_event()
            if isinstance(event, h11.EndOfMessage) or event is h11.NEED_DATA:
                break
        conn.start_next_cycle()
    slow = (time.perf_counter() - start) / n * 1e6
    return [("httptools (llhttp)", fast), ("h11 (incl. its request bookkeeping)", slow)]


async def tiny_chunks(size: int = 1 << 20) -> float:
    """Seconds for a body of ``size`` 1-byte chunks, written at once, through the engine."""
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"1\r\nx\r\n" * size + b"0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = NativeEngine(max_connections=1, timeout=60.0, headers=None)
    try:
        start = time.perf_counter()
        response = await engine.request(Request("GET", f"http://127.0.0.1:{port}/", 60.0))
        elapsed = time.perf_counter() - start
        assert len(response.content) == size
    finally:
        await engine.aclose()
        server.close()
        await server.wait_closed()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description="NativeEngine vs plain aiohttp")
    parser.add_argument("--requests", type=int, default=10_000, help="GETs per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument("--before", default="a5622da", help="git revision of the old engine")
    args = parser.parse_args()

    runners: list[tuple[str, Runner]] = [("NativeEngine (httptools, hardened)", native)]
    old = load_before(args.before)
    if old is not None:
        runners.append((f"NativeEngine before ({args.before}, hand parser)", before_runner(old)))
    runners.append(("plain aiohttp.ClientSession + semaphore", plain_aiohttp))
    scenarios = [
        ("fast: 10 KB, concurrency 50", 0.0, 50),
        ("latency-bound: 10 KB + 50 ms, concurrency 200", 0.05, 200),
    ]
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, ", end="")
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    best: dict[tuple[str, str], tuple[float, float]] = {}
    tag = 0
    for name, delay, concurrency in scenarios:
        proc, base = start_server(delay)
        try:
            for round_ in range(args.rounds):
                for label, runner in runners:
                    tag += 1
                    rps, cpu_us = measure(runner, base, args.requests, concurrency, f"n{tag}x")
                    print(
                        f"  {name} | {label} | round {round_ + 1}: {rps:,.0f} req/s, "
                        f"{cpu_us:,.0f} us CPU/req",
                        flush=True,
                    )
                    was = best.get((name, label), (0.0, float("inf")))
                    best[(name, label)] = (max(was[0], rps), min(was[1], cpu_us))
        finally:
            proc.terminate()
            proc.wait(10)
    print()
    print("| run | client | requests/s | client CPU us/request |")
    print("|---|---|---:|---:|")
    for (name, label), (rps, cpu_us) in best.items():
        print(f"| {name} | {label} | {rps:,.0f} | {cpu_us:,.0f} |")
    summary(best, runners, scenarios, old is not None)


def summary(
    best: dict[tuple[str, str], tuple[float, float]],
    runners: list[tuple[str, Runner]],
    scenarios: list[tuple[str, float, int]],
    with_before: bool,
) -> None:
    """Print the ratios, then the parser figures and the 1-byte-chunk timing."""
    print()
    for name, _, concurrency in scenarios:
        speed = {label: best[(name, label)][0] for label, _ in runners}
        ours = speed[runners[0][0]]
        aio = speed[runners[-1][0]]
        line = f"- {name}: NativeEngine = {ours / aio:.2f}x plain aiohttp"
        if with_before:
            line += f", {ours / speed[runners[1][0]]:.2f}x the engine before hardening"
        if "latency" in name:
            ceiling = concurrency / 0.05
            line += f", {ours / ceiling:.2f}x the {ceiling:,.0f}/s ceiling"
        print(line)
    print()
    print("| parser, small keep-alive responses (1 KB body, 5 headers) | us/response |")
    print("|---|---:|")
    for label, us in parser_figures(50_000):
        print(f"| {label} | {us:.2f} |")
    print()
    print(
        f"1 MiB of 1-byte chunks in one write, through NativeEngine: "
        f"{asyncio.run(tiny_chunks()):.2f} s"
    )


if __name__ == "__main__":
    main()
