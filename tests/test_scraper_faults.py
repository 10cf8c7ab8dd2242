"""Scraper fault suite: a chaotic server, and memory over 100,000 URLs.

The chaos run sends 5,000 URLs over 5 platforms (5 loopback ports) to a server that
answers 20% 503, 5% 429 with ``Retry-After``, cuts 2% of connections mid-body and hangs
1% past the timeout, and asserts on the server's own records: one result per URL, no
platform above its limit, nothing sent inside a ``Retry-After`` window, attempts within
the policy, and a finish time within a bound computed from the policy and the faults.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from engines import ENGINES
from leadperf import Settings
from leadperf.scraper import AsyncScraper, PlatformLimits, RetryPolicy
from scrape_server import ScrapeServer

PLATFORMS = 5
URLS = 5_000
LIMIT = 4
TIMEOUT = 0.5
RETRY_AFTER = 0.3
#: A request sent before the client read a 429 may reach the server just after it.
GRACE = 0.1
POLICY = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2)
CHAOS = f"p503=0.2&p429=0.05&drop=0.02&hang=0.01&ra={RETRY_AFTER}"


@pytest.fixture
def chaos() -> Iterator[ScrapeServer]:
    with ScrapeServer(ports=PLATFORMS) as srv:
        yield srv


def finish_bound(server: ScrapeServer, requests: int) -> float:
    """Seconds the run may take, from the policy and the faults the server served.

    Per platform: every 429 may block it for ``Retry-After`` (blocks counted as if they
    never overlapped) and every hang holds one of ``LIMIT`` slots for ``TIMEOUT``; the
    slowest platform bounds the run. On top: one URL's whole backoff chain, and the CPU
    cost of every request on this shared machine (client and server in one process,
    at most 5 ms each), plus 5 s of start-up and scheduling slack.
    """
    throttles = Counter(index for _, index, _ in server.throttled())
    hangs_per_platform = server.faults.get("hang", 0) / PLATFORMS * 2  # uneven: doubled
    per_platform = max(
        throttles[i] * RETRY_AFTER + hangs_per_platform * TIMEOUT / LIMIT for i in range(PLATFORMS)
    )
    backoff_chain = POLICY.attempts * max(POLICY.max_backoff, RETRY_AFTER)
    return per_platform + backoff_chain + requests * 0.005 + 5.0


@pytest.mark.anyio
async def test_chaos_run_keeps_every_promise(chaos: ScrapeServer, reliability: Any) -> None:
    urls = [chaos.url(i % PLATFORMS, f"/chaos/{i}?{CHAOS}") for i in range(URLS)]
    limits = {
        chaos.platform(i): PlatformLimits(max_concurrent=LIMIT, adaptive=False)
        for i in range(PLATFORMS)
    }
    # adaptive=False: a 25% error rate would otherwise (rightly) slow each platform to a
    # crawl; the bound below is then computable from the policy alone.
    start = time.monotonic()
    async with AsyncScraper(
        settings=Settings(),
        timeout=TIMEOUT,
        retry=POLICY,
        limits=limits,
        max_connections=PLATFORMS * LIMIT,
        trust_env=False,
    ) as scraper:
        results = await scraper.scrape_batch(urls)
    elapsed = time.monotonic() - start

    # exactly one result per URL, in order
    assert [r.url for r in results] == urls
    # no platform above its limit, on the server's own count
    peaks = [chaos.max_concurrency(i) for i in range(PLATFORMS)]
    assert max(peaks) <= LIMIT, peaks
    # attempts never above the policy (server side and result side)
    hits = chaos.all_hits()
    assert len(hits) == URLS
    assert max(hits.values()) <= POLICY.attempts
    assert max(r.attempts for r in results) <= POLICY.attempts
    # nothing sent to a platform while a Retry-After it sent holds
    arrivals = [(t, i) for i in range(PLATFORMS) for t, _ in chaos.arrivals(i)]
    early = [
        (t - at, ra)
        for at, index, ra in chaos.throttled()
        for t, i in arrivals
        if i == index and at + GRACE < t < at + ra - 0.01
    ]
    assert not early, early[:5]
    # finish within the bound computed from the policy
    requests = sum(hits.values())
    bound = finish_bound(chaos, requests)
    assert elapsed < bound, (elapsed, bound)
    ok = sum(r.ok for r in results)
    kinds = Counter(type(r.error).__name__ for r in results if r.error is not None)
    faults = chaos.faults
    assert all(faults.get(kind, 0) > 0 for kind in ("503", "429", "drop", "hang")), faults
    assert ok > URLS * 0.9, (ok, kinds)
    reliability.record(
        "scraper",
        f"{URLS} URLs over {PLATFORMS} platforms: 20% 503, 5% 429 + Retry-After {RETRY_AFTER} s,"
        f" 2% cut mid-body, 1% hang past a {TIMEOUT} s timeout",
        "one result per URL; no platform above its limit; nothing sent inside a "
        "Retry-After; attempts <= policy; finish within a bound from the policy",
        f"{len(results)} results for {URLS} URLs ({ok} ok, failed: {dict(kinds)}); "
        f"peak per platform {max(peaks)}/{LIMIT}; {requests} requests, max "
        f"{max(hits.values())} per URL (policy {POLICY.attempts}); faults served "
        f"{faults}; 0 sends inside a Retry-After; {elapsed:.1f} s (bound {bound:.1f} s)",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_retry_wait_frees_the_slot(
    chaos: ScrapeServer, engine: str, reliability: Any
) -> None:
    key = f"slot-{engine}-{time.monotonic_ns()}"
    failing = chaos.url(0, f"/fail/{key}?n=1&status=503")
    other = chaos.url(0, f"/page/{key}-other")
    policy = RetryPolicy(attempts=2, backoff=1.0, jitter=False)
    limits = {chaos.platform(0): PlatformLimits(max_concurrent=1, adaptive=False)}
    async with AsyncScraper(
        settings=Settings(), engine=engine, retry=policy, limits=limits, trust_env=False
    ) as scraper:
        results = await scraper.scrape_batch([failing, other])
    assert all(r.ok for r in results)
    times = {target: t for t, target in chaos.arrivals(0)}
    first_fail = min(t for t, target in chaos.arrivals(0) if target.startswith("/fail/"))
    waited = times[f"/page/{key}-other"] - first_fail
    assert waited < 0.5, f"the next URL waited {waited:.2f} s behind a 1 s backoff"
    reliability.record(
        "scraper",
        f"max_concurrent=1, a 503 retried after a 1 s backoff ({engine})",
        "a backoff wait gives its platform slot back",
        f"the next URL was sent {waited * 1000:.0f} ms after the 503, not after the backoff",
    )


# -- memory -------------------------------------------------------------------------------

_RSS_SCRIPT = r"""
import asyncio, gc, sys, time
from leadperf import Settings
from leadperf.scraper import AsyncScraper

PORT, N = int(sys.argv[1]), int(sys.argv[2])

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0

async def main():
    urls = (f"http://127.0.0.1:{PORT}/tiny/{i}" for i in range(N))
    count = ok = 0
    base = 0.0
    gc.collect()
    start = time.monotonic()
    async with AsyncScraper(settings=Settings(), max_concurrent=50, trust_env=False) as s:
        async for result in s.scrape_iter(urls):
            count += 1
            ok += result.ok
            if count == 10_000:
                base = rss_mb()
    print(count, ok, f"{base:.1f}", f"{rss_mb():.1f}", f"{time.monotonic() - start:.1f}")

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_scrape_iter_over_100k_urls_keeps_memory_bounded(reliability: Any) -> None:
    n = 100_000
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # The server in its own process: the client's RSS is measured alone, on its own core.
    server = subprocess.Popen(
        [sys.executable, os.path.join(tests_dir, "scrape_server.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(port), str(n)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        server.terminate()
        server.wait(10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, ok, base, peak, seconds = proc.stdout.split()
    assert (int(count), int(ok)) == (n, n)
    growth = float(peak) - float(base)
    # bounded: the peak after 10K results grows by less than 40 MB over the next 90K
    assert growth < 40.0, (base, peak)
    reliability.record(
        "scraper",
        f"scrape_iter over {n:,} URLs (aiohttp, max_concurrent=50, server in its own process)",
        "memory bounded by batch_size whatever the number of URLs",
        f"peak RSS {peak} MB ({base} MB after the first 10,000 results, +{growth:.1f} MB "
        f"over the next 90,000); {count} results in {seconds} s",
    )
