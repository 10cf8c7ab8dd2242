"""The request pipeline above the engine: dedup, waits, shared hooks, guard, blocking calls."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest

from engines import ENGINES
from leadperf import Settings
from leadperf._portal import get_portal
from leadperf._scrape._urls import check_public, is_public_address
from leadperf.errors import LeadperfError, UnsafeRequestError
from leadperf.scraper import AsyncScraper, PlatformLimits, RetryPolicy
from scrape_server import ScrapeServer

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[ScrapeServer]:
    with ScrapeServer(ports=2) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: ScrapeServer) -> None:
    server.reset()


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex[:10]


def scraper(**kwargs: Any) -> AsyncScraper:
    kwargs.setdefault("settings", Settings())
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("trust_env", False)
    return AsyncScraper(**kwargs)


# -- dedup without a cache ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_identical_requests_in_flight_share_one_request(
    server: ScrapeServer, key: str, engine: str
) -> None:
    url = server.url(0, f"/page/{key}?delay=0.3")
    async with scraper(engine=engine, max_concurrent=10) as s:
        results = await asyncio.gather(*(s.fetch(url) for _ in range(10)))
        stats = s.stats()
    assert server.hits(f"/page/{key}?delay=0.3") == 1
    assert all(r.ok and r.content == results[0].content for r in results)
    assert sum(r.attempts == 0 for r in results) == 9  # nine got the first one's answer
    assert stats.deduplicated == 9
    assert stats.requests == 1


@pytest.mark.anyio
async def test_a_batch_fetches_each_repeated_url_once(server: ScrapeServer, key: str) -> None:
    fast = server.url(0, f"/page/{key}-fast")
    slow = server.url(1, f"/page/{key}-slow?delay=0.1")
    urls = [fast, slow] * 10 + [fast]
    async with scraper(max_concurrent=1) as s:  # one slot: repeats are never in flight together
        results = await s.scrape_batch(urls)
    assert [r.url for r in results] == urls
    assert all(r.ok for r in results)
    assert server.hits(f"/page/{key}-fast") == 1
    assert server.hits(f"/page/{key}-slow?delay=0.1") == 1


@pytest.mark.anyio
async def test_a_dedup_waiter_gives_its_slot_back(server: ScrapeServer, key: str) -> None:
    # Leader retries after a backoff; while it waits, the identical requests must not hold
    # every slot (that would deadlock the leader's retry).
    url = server.url(0, f"/fail/{key}?n=1&status=503")
    policy = RetryPolicy(attempts=2, backoff=0.2, jitter=False)
    async with scraper(max_concurrent=2, retry=policy) as s:
        with anyio.fail_after(10):
            results = await asyncio.gather(*(s.fetch(url) for _ in range(3)))
    assert all(r.ok for r in results)
    assert server.hits(f"/fail/{key}?n=1&status=503") == 2


# -- Retry-After slows the whole platform --------------------------------------------------


@pytest.mark.anyio
async def test_retry_after_holds_back_the_whole_platform(server: ScrapeServer, key: str) -> None:
    throttled = server.url(0, f"/throttle/{key}?n=1&retry_after=1")
    others = [server.url(0, f"/page/{key}-{i}?delay=0.05") for i in range(4)]
    limits = {server.platform(0): PlatformLimits(max_concurrent=1)}
    async with scraper(limits=limits) as s:
        results = await s.scrape_batch([throttled, *others])
    assert all(r.ok for r in results)
    arrivals = sorted(server.arrivals(0))
    first = arrivals[0]
    assert first[1].startswith("/throttle/")
    later = [t - first[0] for t, _ in arrivals[1:]]
    assert min(later) >= 0.95, later  # nothing went to the platform during Retry-After


# -- shared limiter and dedup: the call points ---------------------------------------------


class RecordingLimiter:
    """An in-memory SharedLimiter that records every call and enforces ``limit``."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, Any]] = []
        self.held: dict[str, int] = {}
        self.peak = 0
        self._next = 0

    async def acquire(self, platform: str, limit: int, delay: float) -> object:
        while self.held.get(platform, 0) >= limit:
            await anyio.sleep(0.001)
        self.held[platform] = self.held.get(platform, 0) + 1
        self.peak = max(self.peak, self.held[platform])
        self._next += 1
        self.events.append((time.monotonic(), "acquire", platform, self._next))
        return self._next

    async def release(self, platform: str, lease: object) -> None:
        self.held[platform] -= 1
        self.events.append((time.monotonic(), "release", platform, lease))

    async def report(self, platform: str, status: int | None, retry_after: float | None) -> None:
        self.events.append((time.monotonic(), "report", platform, (status, retry_after)))


class SetDedup:
    """An in-memory SharedDedup: a set shared by everyone holding it."""

    def __init__(self, seen: Sequence[str] = ()) -> None:
        self.seen = set(seen)
        self.calls: list[list[str]] = []

    async def add_many(self, urls: Sequence[str]) -> list[bool]:
        self.calls.append(list(urls))
        fresh = []
        for url in urls:
            fresh.append(url not in self.seen)
            self.seen.add(url)
        return fresh


@pytest.mark.anyio
async def test_shared_limiter_wraps_every_send_and_is_released_before_a_backoff(
    server: ScrapeServer, key: str
) -> None:
    limiter = RecordingLimiter()
    failing = server.url(0, f"/fail/{key}?n=1&status=503")
    pages = [server.url(0, f"/page/{key}-{i}") for i in range(8)]
    policy = RetryPolicy(attempts=2, backoff=0.3, jitter=False)
    async with scraper(limiter=limiter, max_concurrent=3, retry=policy) as s:
        results = await s.scrape_batch([failing, *pages])
    assert all(r.ok for r in results)
    kinds = [e[1] for e in limiter.events]
    sends = server.total_hits
    assert kinds.count("acquire") == kinds.count("release") == kinds.count("report") == sends
    assert limiter.peak <= 3
    # every lease is released, and reported, after it was acquired
    acquired = {e[3]: e[0] for e in limiter.events if e[1] == "acquire"}
    released = {e[3]: e[0] for e in limiter.events if e[1] == "release"}
    assert all(released[lease] >= acquired[lease] for lease in acquired)
    statuses = [e[3][0] for e in limiter.events if e[1] == "report"]
    assert statuses.count(503) == 1
    assert statuses.count(200) == sends - 1
    # the 503's lease went back at once, not after the 0.3 s backoff
    report_503 = next(e[0] for e in limiter.events if e[1] == "report" and e[3][0] == 503)
    last_release_before = max(
        e[0] for e in limiter.events if e[1] == "release" and e[0] <= report_503
    )
    assert report_503 - last_release_before < 0.1


@pytest.mark.anyio
async def test_shared_dedup_marks_urls_others_took(server: ScrapeServer, key: str) -> None:
    taken = server.url(0, f"/page/{key}-taken")
    fresh = [server.url(0, f"/page/{key}-{i}") for i in range(5)]
    dedup = SetDedup([taken])
    urls = [fresh[0], taken, *fresh[1:], fresh[0]]
    async with scraper(dedup=dedup) as s:
        results = await s.scrape_batch(urls)
        stats = s.stats()
    assert dedup.calls == [urls]  # one round trip for the batch
    assert [r.url for r in results] == urls
    assert (results[1].duplicate, results[1].ok, results[1].error) == (True, False, None)
    assert results[-1].duplicate  # the repeat inside the batch: the set already held it
    assert [r.ok for r in results] == [True, False, True, True, True, True, False]
    assert server.hits(f"/page/{key}-taken") == 0
    assert server.total_hits == 5
    assert stats.failed == 0


@pytest.mark.anyio
async def test_shared_dedup_is_asked_in_chunks_and_fails_open(
    server: ScrapeServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leadperf._scrape import _batch

    monkeypatch.setattr(_batch, "DEDUP_CHUNK", 4)
    dedup = SetDedup()
    urls = [server.url(0, f"/tiny/{key}-{i}") for i in range(10)]
    async with scraper(dedup=dedup) as s:
        results = [r async for r in s.scrape_iter(urls)]
    assert [len(c) for c in dedup.calls] == [4, 4, 2]
    assert sorted(r.url for r in results) == sorted(urls)

    class Broken:
        async def add_many(self, urls: Sequence[str]) -> list[bool]:
            raise ConnectionError("dedup store down")

    async with scraper(dedup=Broken()) as s:
        results = await s.scrape_batch(urls[:3])
        stats = s.stats()
    assert all(r.ok for r in results)  # fetched anyway: an outage never loses the batch
    assert stats.errors.get("DedupError") == 1


# -- private networks ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_private_networks_are_refused_when_asked(
    server: ScrapeServer, key: str, engine: str
) -> None:
    urls = [
        server.url(0, f"/page/{key}"),
        f"http://localhost:{server.ports[0]}/page/{key}-name",
        f"http://[::1]:{server.ports[0]}/page/{key}-v6",
    ]
    async with scraper(engine=engine, allow_private_networks=False) as s:
        results = await s.scrape_batch(urls)
    assert all(isinstance(r.error, UnsafeRequestError) for r in results), results
    assert "allow_private_networks" in str(results[0].error)
    assert server.total_hits == 0
    async with scraper(engine=engine) as s:  # the default allows them
        assert (await s.fetch(urls[0])).ok


def test_address_classes() -> None:
    private = [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
    ]
    assert not any(is_public_address(a) for a in private)
    assert all(is_public_address(a) for a in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"))


@pytest.mark.anyio
async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(UnsafeRequestError, match="resolves to"):
        await check_public("http://localhost/")


# -- blocking calls on a scraper opened elsewhere ------------------------------------------


def test_sync_calls_work_on_a_scraper_a_facade_opened(server: ScrapeServer, key: str) -> None:
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(5)]
    # What `with PerformanceOptimizer(...) as perf:` does: enter on the portal's loop.
    with get_portal().wrap_async_context_manager(scraper()) as s:
        results = s.scrape_batch_sync(urls)
        single = s.fetch_sync(urls[0])
    assert [r.url for r in results] == urls
    assert all(r.ok for r in results)
    assert single.ok
    assert s.closed


@pytest.mark.anyio
async def test_sync_calls_work_from_a_running_loop_and_await_from_it_is_refused_clearly(
    server: ScrapeServer, key: str
) -> None:
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(3)]
    portal = get_portal()
    cm = portal.wrap_async_context_manager(scraper())
    s = cm.__enter__()  # a notebook cell: opened by a sync `with` while a loop runs here
    try:
        assert all(r.ok for r in s.scrape_batch_sync(urls))
        with pytest.raises(LeadperfError, match="async with") as caught:
            await s.scrape_batch(urls)
        assert not isinstance(caught.value, BaseExceptionGroup)
        with pytest.raises(LeadperfError, match="async with"):
            await s.fetch(urls[0])
    finally:
        cm.__exit__(None, None, None)
    assert s.closed


@pytest.mark.anyio
async def test_a_blocking_call_on_the_scrapers_own_loop_is_refused(server: ScrapeServer) -> None:
    async with scraper() as s:
        with pytest.raises(LeadperfError, match=r"await scraper\.scrape_batch"):
            s.scrape_batch_sync([server.url(0, "/tiny/x")])


def test_sync_calls_from_other_threads_run_on_the_scrapers_loop(
    server: ScrapeServer, key: str
) -> None:
    urls = [server.url(1, f"/tiny/{key}-{i}") for i in range(4)]
    outcomes: list[bool] = []
    with scraper() as s:

        def work() -> None:
            outcomes.extend(r.ok for r in s.scrape_batch_sync(urls))

        threads = [threading.Thread(target=work) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert outcomes == [True] * 12


def test_the_facade_sync_with_pattern(server: ScrapeServer, key: str) -> None:
    from leadperf import PerformanceOptimizer

    urls = [server.url(0, f"/page/{key}-{i}") for i in range(4)]
    settings = Settings().evolve(monitoring={"enabled": False})
    with PerformanceOptimizer(settings=settings) as perf:
        results = perf.scraper.scrape_batch_sync(urls)
        single = perf.scraper.fetch_sync(urls[0])
    assert all(r.ok for r in results)
    assert single.ok


@pytest.mark.anyio
async def test_the_aiohttp_resolver_refuses_private_addresses_at_connect_time(
    server: ScrapeServer,
) -> None:
    # The scraper checks each hop first; the engine's resolver checks again when it
    # connects, so a name that changes its answer in between (DNS rebinding) is refused.
    from leadperf._scrape._engine import make_engine
    from leadperf._scrape._request import Request

    engine = make_engine(
        "aiohttp",
        max_connections=2,
        timeout=5.0,
        headers=None,
        trust_env=False,
        allow_private_networks=False,
    )
    try:
        with pytest.raises(UnsafeRequestError, match="resolves to"):
            await engine.request(Request("GET", f"http://localhost:{server.ports[0]}/tiny/x", 5.0))
    finally:
        await engine.aclose()
    assert server.total_hits == 0


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_redirect_loop_is_one_typed_attempt(engine: str, reliability: Any) -> None:
    from hostile_server import HostileServer, raw
    from leadperf.errors import TooManyRedirectsError

    loop = b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n"
    with HostileServer() as hostile:
        url = hostile.route("/loop", raw(loop, keep=True))
        async with scraper(engine=engine, retry=RetryPolicy(attempts=3, backoff=0)) as s:
            result = await s.fetch(url)
        sent = len(hostile.requests)
    assert isinstance(result.error, TooManyRedirectsError)
    assert result.attempts == 1  # never retried
    assert sent == 21  # the first request and 20 redirects, once
    reliability.record(
        "scraper",
        f"a redirect loop, retry policy of 3 attempts ({engine})",
        "a typed error, never retried",
        f"TooManyRedirectsError after {sent} requests, attempts={result.attempts}",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_max_redirects_counts_redirects_followed(engine: str) -> None:
    from hostile_server import HostileServer, raw, response
    from leadperf.errors import TooManyRedirectsError
    from leadperf.scraper import Limits

    def hop(n: int) -> bytes:
        return f"HTTP/1.1 302 Found\r\nLocation: /r{n}\r\nContent-Length: 0\r\n\r\n".encode()

    with HostileServer() as hostile:
        for n in range(3):
            hostile.route(f"/r{n}", raw(hop(n + 1), keep=True))
        hostile.route("/r3", raw(response(b"arrived"), keep=True))
        two = Limits(max_redirects=2)
        three = Limits(max_redirects=3)
        async with scraper(engine=engine, response_limits=three) as s:
            arrived = await s.fetch(hostile.url("/r0"))
        async with scraper(engine=engine, response_limits=two) as s:
            refused = await s.fetch(hostile.url("/r0"))
    assert arrived.content == b"arrived"  # three redirects followed with max_redirects=3
    assert isinstance(refused.error, TooManyRedirectsError)


@pytest.mark.anyio
async def test_requests_with_different_headers_never_share_an_answer(
    server: ScrapeServer, key: str
) -> None:
    import json

    url = server.url(0, "/echo?delay=0.2")
    async with scraper(max_concurrent=4) as s:
        alice, bob, alice_again = await asyncio.gather(
            s.fetch(url, headers={"Authorization": "Bearer alice"}),
            s.fetch(url, headers={"Authorization": "Bearer bob"}),
            s.fetch(url, headers={"authorization": "Bearer alice"}),
        )
    assert json.loads(alice.content)["headers"]["authorization"] == "Bearer alice"
    assert json.loads(bob.content)["headers"]["authorization"] == "Bearer bob"
    assert alice_again.content == alice.content  # same headers: one request
    assert server.hits("/echo?delay=0.2") == 2
