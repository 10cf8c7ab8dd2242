"""AsyncScraper against a real HTTP server on 127.0.0.1 (tests/scrape_server.py).

Each server port is one platform. Assertions are on what the server saw: how many
requests it served at once per platform, when they arrived, how often each URL came.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import attrs
import httpx
import pytest

from engines import ENGINES
from leadperf import Settings
from leadperf._core.lifecycle import Closeable, aclose_resource
from leadperf.cache import MemoryCache
from leadperf.errors import (
    ClosedError,
    ConfigError,
    HTTPStatusError,
    InvalidURLError,
    LeadperfError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
)
from leadperf.scraper import (
    AsyncScraper,
    PlatformLimits,
    PlatformStats,
    Response,
    RetryPolicy,
    ScrapeClient,
    ScrapeResult,
    ScraperStats,
)
from scrape_server import PAGE_SIZE, ScrapeServer

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[ScrapeServer]:
    with ScrapeServer(ports=3) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_server(server: ScrapeServer) -> None:
    server.reset()


@pytest.fixture
def key() -> str:
    """A unique path segment so per-key server behaviours never leak between tests."""
    return uuid.uuid4().hex[:10]


def scraper(**kwargs: object) -> AsyncScraper:
    kwargs.setdefault("settings", Settings())
    kwargs.setdefault("retry", FAST_RETRY)
    return AsyncScraper(**kwargs)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- batches: order, completeness, limits -----------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_batch_returns_every_url_once_in_input_order(
    server: ScrapeServer, key: str, engine: str
) -> None:
    n = 60 if engine == "httpx" else 300  # httpcore's pool is slow; fewer suffice
    urls = [server.url(i % 3, f"/page/{key}-{i}") for i in range(n)]
    async with scraper(max_concurrent=4, engine=engine) as s:
        results = await s.scrape_batch(urls)
    assert [r.url for r in results] == urls
    assert all(r.ok and r.status_code == 200 and r.attempts == 1 for r in results)
    assert all(len(r.content) == PAGE_SIZE for r in results)
    assert isinstance(results[0].headers, httpx.Headers)
    assert results[0].headers["Content-Type"].startswith("text/html")
    assert results[0].text.startswith("<html>")
    # The server saw each URL exactly once: nothing lost, nothing fetched twice.
    for i in range(n):
        assert server.hits(f"/page/{key}-{i}") == 1
    assert server.total_hits == n


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_per_platform_limit_holds_and_is_reached(
    server: ScrapeServer, key: str, engine: str
) -> None:
    urls = [server.url(i % 3, f"/page/{key}-{i}?delay=0.03") for i in range(60)]
    async with scraper(max_concurrent=3, max_connections=100, engine=engine) as s:
        results = await s.scrape_batch(urls)
    assert all(r.ok for r in results)
    assert [server.max_concurrency(i) for i in range(3)] == [3, 3, 3]
    assert server.total_max_concurrency <= 9


@pytest.mark.anyio
async def test_max_connections_caps_all_platforms_together(server: ScrapeServer, key: str) -> None:
    urls = [server.url(i % 3, f"/page/{key}-{i}?delay=0.03") for i in range(60)]
    async with scraper(max_concurrent=5, max_connections=4) as s:
        results = await s.scrape_batch(urls)
    assert all(r.ok for r in results)
    assert server.total_max_concurrency == 4


@pytest.mark.anyio
async def test_limit_holds_under_retries(server: ScrapeServer, key: str) -> None:
    # Every URL fails once with 503 (a throttle signal), then succeeds.
    urls = [server.url(0, f"/fail/{key}-{i}?n=1&status=503&delay=0.02") for i in range(8)]
    async with scraper(max_concurrent=2) as s:
        results = await s.scrape_batch(urls)
        stats = s.stats()
    assert all(r.ok and r.attempts == 2 for r in results)
    assert server.max_concurrency(0) <= 2
    assert server.total_hits == 16
    assert stats.retries == 8
    assert stats.status_codes == {503: 8, 200: 8}


@pytest.mark.anyio
async def test_concurrent_batches_and_fetches_share_the_platform_limit(
    server: ScrapeServer, key: str
) -> None:
    async with scraper(max_concurrent=3) as s, anyio.create_task_group() as tg:
        for b in range(3):
            urls = [server.url(0, f"/page/{key}-{b}-{i}?delay=0.02") for i in range(15)]
            tg.start_soon(s.scrape_batch, urls)
        for i in range(10):
            tg.start_soon(s.fetch, server.url(0, f"/page/{key}-f{i}?delay=0.02"))
    assert server.max_concurrency(0) == 3
    assert server.total_hits == 55


@pytest.mark.anyio
async def test_delay_seconds_spaces_requests_to_a_platform(server: ScrapeServer, key: str) -> None:
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(6)]
    urls += [server.url(1, f"/page/{key}-other-{i}") for i in range(6)]
    async with scraper(max_concurrent=5) as s:
        results = await s.scrape_batch(urls, delay_seconds=0.1)
    assert all(r.ok for r in results)
    for index in (0, 1):
        times = sorted(t for t, _ in server.arrivals(index))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == 6
        assert min(gaps) >= 0.08, gaps
    # The two platforms are spaced independently: they ran side by side.
    first = [min(t for t, _ in server.arrivals(i)) for i in (0, 1)]
    assert abs(first[0] - first[1]) < 0.08


# -- politeness: Retry-After, throttling, recovery --------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("date", [False, True], ids=["seconds", "http-date"])
async def test_retry_after_is_respected(server: ScrapeServer, key: str, date: bool) -> None:
    flag = "&date=1" if date else ""
    urls = [server.url(0, f"/throttle/{key}?n=1&retry_after=2{flag}")]
    urls += [server.url(0, f"/page/{key}-{i}") for i in range(3)]
    async with scraper(max_concurrent=1) as s:
        results = await s.scrape_batch(urls)
        stats = s.stats()
    assert all(r.ok for r in results)
    assert results[0].attempts == 2
    arrivals = sorted(server.arrivals(0))
    assert len(arrivals) == 5
    t429 = arrivals[0][0]
    # An HTTP date has one-second resolution: "2 s from now" may mean just over 1 s.
    least = 1.0 if date else 1.95
    assert all(t - t429 >= least for t, _ in arrivals[1:]), [t - t429 for t, _ in arrivals]
    assert stats.platforms[server.platform(0)].throttles == 1
    assert stats.status_codes[429] == 1
    assert stats.rate_limited == 1


@pytest.mark.anyio
async def test_a_throttled_platform_does_not_slow_the_others(
    server: ScrapeServer, key: str
) -> None:
    urls = [server.url(0, f"/throttle/{key}?n=1&retry_after=2")]
    urls += [server.url(0, f"/page/{key}-a{i}") for i in range(5)]
    urls += [server.url(1, f"/page/{key}-b{i}?delay=0.01") for i in range(30)]
    async with scraper(max_concurrent=2) as s:
        results = await s.scrape_batch(urls)
        stats = s.stats()
    assert all(r.ok for r in results)
    t429 = min(t for t, _ in server.arrivals(0))
    late = [t for t, _ in server.arrivals(0) if t > t429 + 0.05]
    assert late
    assert min(late) >= t429 + 1.95  # platform A: nothing before its Retry-After passed
    b_times = [t for t, _ in server.arrivals(1)]
    assert len(b_times) == 30
    # Platform B went on meanwhile: all of it was done long before A's block ended.
    assert max(b_times) < t429 + 1.5, "platform B waited for platform A's Retry-After"
    a, b = stats.platforms[server.platform(0)], stats.platforms[server.platform(1)]
    assert a.throttles == 1
    assert b.throttles == 0
    assert b.limit == b.max_limit == 2
    assert b.delay == 0.0


@pytest.mark.anyio
async def test_steady_success_restores_a_throttled_platform(server: ScrapeServer, key: str) -> None:
    async with scraper(max_concurrent=4, retry=RetryPolicy(attempts=1)) as s:
        throttled = await s.fetch(server.url(0, f"/status/429?{key}"))
        assert isinstance(throttled.error, HTTPStatusError)
        state = s.stats().platforms[server.platform(0)]
        assert state.limit == 2
        assert state.delay > 0
        await s.scrape_batch([server.url(0, f"/page/{key}-{i}") for i in range(40)])
        state = s.stats().platforms[server.platform(0)]
    assert state.limit == state.max_limit == 4
    assert state.delay == 0.0


@pytest.mark.anyio
async def test_timeouts_in_a_row_slow_the_platform_down(server: ScrapeServer, key: str) -> None:
    urls = [server.url(2, f"/hang?{key}-{i}") for i in range(3)]
    async with scraper(max_concurrent=3, timeout=0.2, retry=RetryPolicy(attempts=1)) as s:
        results = await s.scrape_batch(urls)
        state = s.stats().platforms[server.platform(2)]
    assert all(isinstance(r.error, ScrapeTimeoutError) for r in results)
    assert state.throttles == 1
    assert state.limit == 1


# -- retries and failures ---------------------------------------------------------------


@pytest.mark.anyio
async def test_4xx_is_not_retried_but_5xx_is(server: ScrapeServer, key: str) -> None:
    async with scraper() as s:
        missing, broken = await s.scrape_batch(
            [server.url(0, f"/status/404?{key}"), server.url(1, f"/status/500?{key}")]
        )
    assert isinstance(missing.error, HTTPStatusError)
    assert missing.error.status_code == 404
    assert missing.attempts == 1
    assert missing.status_code == 404
    assert missing.content == b"status"
    assert server.hits(f"/status/404?{key}") == 1
    assert isinstance(broken.error, HTTPStatusError)
    assert broken.attempts == 3
    assert server.hits(f"/status/500?{key}") == 3
    assert not missing.ok
    with pytest.raises(HTTPStatusError):
        missing.raise_for_error()


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_dropped_connection_is_retried(server: ScrapeServer, key: str, engine: str) -> None:
    async with scraper(engine=engine) as s:
        result = await s.fetch(server.url(0, f"/drop/{key}?n=1"))
    assert result.ok
    assert result.status_code == 200
    assert server.hits(f"/drop/{key}?n=1") == 2


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_hang_becomes_a_timeout_result(server: ScrapeServer, key: str, engine: str) -> None:
    urls = [server.url(0, f"/hang?{key}"), server.url(0, f"/page/{key}")]
    started = time.monotonic()
    async with scraper(timeout=0.3, engine=engine, retry=RetryPolicy(attempts=2, backoff=0)) as s:
        hung, fine = await s.scrape_batch(urls)
        stats = s.stats()
    assert isinstance(hung.error, ScrapeTimeoutError)
    assert isinstance(hung.error, TimeoutError)
    assert hung.attempts == 2
    assert hung.status_code is None
    assert server.hits(f"/hang?{key}") == 2
    assert fine.ok
    assert time.monotonic() - started < 3
    assert stats.errors == {"ScrapeTimeoutError": 1}


@pytest.mark.anyio
async def test_connection_refused_and_masked_credentials(server: ScrapeServer, key: str) -> None:
    port = closed_port()
    urls = [f"http://user:s3cret@127.0.0.1:{port}/x", server.url(0, f"/page/{key}")]
    async with scraper(retry=RetryPolicy(attempts=2, backoff=0)) as s:
        refused, fine = await s.scrape_batch(urls)
    assert isinstance(refused.error, ScrapeConnectionError)
    assert refused.attempts == 2
    assert "s3cret" not in str(refused.error)
    assert "s3cret" not in repr(refused)
    assert fine.ok


@pytest.mark.anyio
async def test_redirects_are_followed(server: ScrapeServer, key: str) -> None:
    async with scraper() as s:
        result = await s.fetch(server.url(0, f"/redirect?to=/page/{key}"))
    assert result.ok
    assert len(result.content) == PAGE_SIZE
    assert server.hits(f"/page/{key}") == 1


# -- bad input --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bad_urls_become_failed_results(server: ScrapeServer, key: str) -> None:
    good = server.url(0, f"/page/{key}")
    inputs: list[object] = [
        "",
        "   ",
        "example.com/page",
        "ftp://127.0.0.1/file",
        None,
        42,
        "http://",
        "http://[::1",
        good,
    ]
    async with scraper() as s:
        results = await s.scrape_batch(inputs)  # type: ignore[arg-type]
        single = await s.fetch("mailto:someone@example.com")
    assert len(results) == len(inputs)
    for result in results[:-1]:
        assert isinstance(result.error, InvalidURLError), result
        assert result.status_code is None
        assert not result.ok
    assert "scheme" in str(results[2].error)
    assert "unsupported scheme 'ftp'" in str(results[3].error)
    assert "must be a str" in str(results[4].error)
    assert results[-1].ok
    assert isinstance(single.error, InvalidURLError)
    assert server.total_hits == 1


def test_bad_arguments_raise_config_error() -> None:
    settings = Settings()
    bad: list[dict[str, object]] = [
        {"max_concurrent": 0},
        {"max_concurrent": -1},
        {"max_concurrent": 2.5},
        {"timeout": 0},
        {"timeout": -1.0},
        {"max_connections": 0},
        {"engine": "curl"},
        {"retry": 3},
        {"platform_of": "host"},
        {"cache": object()},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError) as info:
            AsyncScraper(settings=settings, **kwargs)  # type: ignore[arg-type]
        assert info.value.key == next(iter(kwargs))
    policy_args: list[dict[str, object]] = [
        {"attempts": 0},
        {"backoff": -1},
        {"max_backoff": -0.5},
        {"retry_on": [404.5]},
        {"retry_on": ["timeout"]},
        {"jitter": "yes"},
    ]
    for kwargs in policy_args:
        with pytest.raises((ConfigError, TypeError)):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_bad_batch_arguments_raise_before_any_request(server: ScrapeServer) -> None:
    async with scraper() as s:
        for kwargs, name in (
            ({"delay_seconds": -1}, "delay_seconds"),
            ({"batch_size": 0}, "batch_size"),
            ({"progress": "yes"}, "progress"),
            ({"scrape_func": 3}, "scrape_func"),
            ({"scrape_func": lambda client, url: None}, "scrape_func"),
        ):
            with pytest.raises(ConfigError) as info:
                await s.scrape_batch([server.url(0, "/page/x")], **kwargs)
            assert info.value.key == name
        with pytest.raises(ConfigError):
            await s.scrape_batch(server.url(0, "/page/x"))
    assert server.total_hits == 0


def test_settings_supply_the_defaults() -> None:
    settings = Settings().evolve(
        scraper={"max_concurrent": 7, "timeout": 4.0, "max_connections": 9, "engine": "httpx"}
    )
    s = AsyncScraper(settings=settings)
    assert (s.max_concurrent, s.timeout, s.max_connections, s.engine_name) == (7, 4.0, 9, "httpx")
    default = AsyncScraper(settings=Settings())
    assert (default.max_concurrent, default.timeout, default.max_connections) == (5, 30.0, 100)
    assert default.engine_name == "aiohttp"
    assert AsyncScraper(3, settings=settings).max_concurrent == 3


def test_settings_come_from_env(tmp_env: pytest.MonkeyPatch) -> None:
    tmp_env.setenv("ASYNC_MAX_CONCURRENT", "11")
    tmp_env.setenv("ASYNC_TIMEOUT", "2.5")
    s = AsyncScraper()
    assert s.max_concurrent == 11
    assert s.timeout == 2.5


# -- scrape_func, scrape_iter, fetch ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_scrape_func_gets_an_httpx_style_client(
    server: ScrapeServer, key: str, engine: str
) -> None:
    async def scrape(client: ScrapeClient, url: str) -> dict[str, object]:
        page = await client.get(url)
        page.raise_for_status()
        data = await client.get(server.url(0, f"/json?{key}"))
        echo = await client.get(server.url(0, "/echo"), headers={"X-Probe": "1"})
        return {
            "status": page.status_code,
            "size": len(page.content),
            "starts": page.text[:6],
            "ctype": page.headers["content-type"],
            "json": data.json(),
            "probe": echo.json()["headers"].get("x-probe"),
            "type": type(page).__name__,
        }

    urls = [server.url(0, f"/page/{key}-{i}") for i in range(5)]
    async with scraper(engine=engine) as s:
        results = await s.scrape_batch(urls, scrape_func=scrape)
    for result in results:
        assert result.ok, result.error
        assert result.value == {
            "status": 200,
            "size": PAGE_SIZE,
            "starts": "<html>",
            "ctype": "text/html; charset=utf-8",
            "json": {"ok": True, "path": "/json"},
            "probe": "1",
            "type": "Response",
        }
    assert server.hits(f"/json?{key}") == 5


@pytest.mark.anyio
async def test_scrape_func_errors_are_recorded_and_retried_when_retryable(
    server: ScrapeServer, key: str
) -> None:
    async def strict(client: ScrapeClient, url: str) -> int:
        response = (await client.get(url)).raise_for_status()
        if "boom" in url:
            raise ValueError("parser failed")
        return response.status_code

    urls = [
        server.url(0, f"/fail/{key}?n=1&status=503"),
        server.url(0, f"/page/{key}-boom"),
        server.url(0, f"/status/404?{key}"),
    ]
    async with scraper() as s:
        flaky, boom, missing = await s.scrape_batch(urls, scrape_func=strict)
    assert flaky.ok
    assert flaky.value == 200
    assert flaky.attempts == 2
    assert isinstance(boom.error, ValueError)
    assert boom.attempts == 1
    assert server.hits(f"/page/{key}-boom") == 1
    assert isinstance(missing.error, HTTPStatusError)
    assert missing.status_code == 404
    assert server.hits(f"/status/404?{key}") == 1


@pytest.mark.anyio
async def test_scrape_iter_yields_every_result_as_it_completes(
    server: ScrapeServer, key: str
) -> None:
    urls = [server.url(i % 3, f"/page/{key}-{i}") for i in range(150)]
    urls.append(server.url(0, f"/page/{key}-slow?delay=0.3"))
    urls.insert(0, "not a url")
    async with scraper(max_concurrent=5) as s:
        seen = [r async for r in s.scrape_iter(iter(urls))]
    assert sorted(r.url for r in seen) == sorted(urls)
    assert seen[-1].url.endswith("slow?delay=0.3")  # completion order, not input order
    assert sum(1 for r in seen if not r.ok) == 1


@pytest.mark.anyio
async def test_scrape_iter_stops_when_the_loop_is_left(server: ScrapeServer, key: str) -> None:
    urls = [server.url(0, f"/page/{key}-{i}?delay=0.02") for i in range(500)]
    async with scraper(max_concurrent=2) as s:
        async for result in s.scrape_iter(urls):
            assert result.ok
            break
        await anyio.sleep(0.2)
        hits = server.total_hits
        await anyio.sleep(0.2)
        assert server.total_hits == hits < 20  # no work continues after the loop ends
        again = await s.fetch(server.url(0, f"/page/{key}-after"))
        assert again.ok
        assert s.stats().platforms[server.platform(0)].in_flight == 0


@pytest.mark.anyio
async def test_scrape_iter_needs_the_scraper_entered() -> None:
    s = scraper()
    with pytest.raises(LeadperfError, match="async with"):
        s.scrape_iter(["http://127.0.0.1:1/"])
    await s.close()


@pytest.mark.anyio
async def test_fetch_honours_limits_and_request_options(server: ScrapeServer, key: str) -> None:
    async with scraper(max_concurrent=2) as s:
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(s.fetch, server.url(1, f"/page/{key}-{i}?delay=0.03"))
        echo = await s.fetch(server.url(1, "/echo"), headers={"X-Token": "abc"}, timeout=5)
        posted = await s.fetch(server.url(1, "/echo"), method="post", content=b"body")
    assert server.max_concurrency(1) == 2
    assert echo.json()["headers"]["x-token"] == "abc"
    assert posted.json()["method"] == "POST"


# -- cache ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cache_hits_and_in_flight_dedup(server: ScrapeServer, key: str) -> None:
    cache = MemoryCache(settings=Settings())
    url = server.url(0, f"/page/{key}?delay=0.2")
    other = server.url(1, f"/page/{key}-other")
    async with scraper(cache=cache, max_concurrent=5) as s:
        first = await s.scrape_batch([url] * 5 + [other])
        assert server.hits(f"/page/{key}?delay=0.2") == 1  # five identical URLs, one fetch
        assert all(r.ok and r.content == first[0].content for r in first)
        assert sum(r.from_cache for r in first[:5]) == 4
        second = await s.scrape_batch([url, other])
        single = await s.fetch(url)
        stats = s.stats()
    assert server.hits(f"/page/{key}?delay=0.2") == 1
    assert server.hits(f"/page/{key}-other") == 1
    assert all(r.from_cache and r.attempts == 0 for r in [*second, single])
    assert second[0].headers["content-type"] == "text/html; charset=utf-8"
    assert len(second[0].content) == PAGE_SIZE
    assert stats.deduplicated + stats.cache_hits == 7
    assert stats.requests == 2


@pytest.mark.anyio
async def test_errors_are_not_cached(server: ScrapeServer, key: str) -> None:
    cache = MemoryCache(settings=Settings())
    url = server.url(0, f"/status/404?{key}")
    async with scraper(cache=cache) as s:
        await s.fetch(url)
        again = await s.fetch(url)
    assert not again.from_cache
    assert server.hits(f"/status/404?{key}") == 2


# -- memory at scale ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_many_urls_stream_through_a_bounded_number_of_tasks(
    server: ScrapeServer, key: str
) -> None:
    # The bounds below do not depend on n; 8,000 keeps the test quick on a shared machine.
    n, batch_size = 8_000, 500
    pulled = 0
    done = 0
    max_ahead = 0

    def urls() -> Iterator[str]:
        nonlocal pulled, max_ahead
        for i in range(n):
            pulled += 1
            max_ahead = max(max_ahead, pulled - done)
            yield server.url(i % 3, f"/tiny/{key}-{i}")

    def progress(count: int, total: int | None) -> None:
        nonlocal done
        done = count
        assert total is None

    max_tasks = 0

    async def sample() -> None:
        nonlocal max_tasks
        while True:
            max_tasks = max(max_tasks, len(asyncio.all_tasks()))
            await anyio.sleep(0.01)

    async with scraper(max_concurrent=10, max_connections=30) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            results = await s.scrape_batch(urls(), batch_size=batch_size, progress=progress)
            tg.cancel_scope.cancel()
        stats = s.stats()
    assert len(results) == n
    assert all(r.ok for r in results)
    assert results[5_678].url.endswith(f"/tiny/{key}-5678")
    assert done == n
    assert max_ahead <= batch_size + 1  # the input is read lazily, never far ahead
    assert max_tasks <= 30 + 10  # workers + the test's own tasks, never one per URL
    assert server.total_hits == n
    assert stats.requests == n
    assert stats.results == n


# -- sync twin, lifecycle, stats --------------------------------------------------------


def test_sync_twin_opens_and_closes_by_itself(server: ScrapeServer, key: str) -> None:
    s = scraper(max_concurrent=2)
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(10)]
    first = s.scrape_batch_sync(urls)
    second = s.scrape_batch_sync(urls[:3])
    assert [r.url for r in first] == urls
    assert all(r.ok for r in first)
    assert len(second) == 3
    assert not s.closed
    assert server.total_hits == 13
    with ThreadPoolExecutor(3) as pool:  # several threads at once share one engine
        batches = list(pool.map(s.scrape_batch_sync, [urls[:4]] * 3))
    assert all(r.ok for batch in batches for r in batch)
    assert "idle" in repr(s)  # the engine opened for those calls was closed after them
    with scraper() as opened:
        assert opened.scrape_batch_sync(urls[:2])[1].ok
        assert opened.fetch_sync(urls[0]).ok
    with pytest.raises(ClosedError):
        opened.scrape_batch_sync(urls)


@pytest.mark.anyio
async def test_sync_twin_works_inside_a_running_event_loop(server: ScrapeServer, key: str) -> None:
    s = scraper()
    urls = [server.url(1, f"/page/{key}-{i}") for i in range(5)]
    results = s.scrape_batch_sync(urls)  # called from a coroutine, as in a notebook cell
    assert [r.url for r in results] == urls
    assert all(r.ok for r in results)
    async with scraper() as opened:
        with pytest.raises(LeadperfError, match=r"await scraper\.scrape_batch"):
            opened.scrape_batch_sync(urls)


@pytest.mark.anyio
async def test_closed_scraper_raises_and_close_is_idempotent(server: ScrapeServer) -> None:
    async with scraper() as s:
        assert (await s.fetch(server.url(0, "/page/x"))).ok
    await s.close()
    await s.close()
    assert s.closed
    with pytest.raises(ClosedError):
        await s.fetch(server.url(0, "/page/x"))
    with pytest.raises(ClosedError):
        await s.scrape_batch([server.url(0, "/page/x")])
    with pytest.raises(ClosedError):
        async with s:
            pass
    assert "closed" in repr(s)


@pytest.mark.anyio
async def test_scraper_is_a_shared_lifecycle_resource(server: ScrapeServer) -> None:
    s = scraper()
    assert isinstance(s, Closeable)
    assert not s.closed
    assert await s.open() is s  # open() without entering: the engine on this loop
    assert await s.open() is s  # idempotent
    assert (await s.fetch(server.url(0, "/page/open"))).ok
    await aclose_resource(s)  # how the facade closes every part
    await s.aclose()  # idempotent, and close() is the same close
    await s.close()
    assert s.closed
    assert s._engine is None
    with pytest.raises(ClosedError, match="cannot be reopened"):
        await s.open()


@pytest.mark.anyio
async def test_progress_reports_every_result(server: ScrapeServer, key: str) -> None:
    calls: list[tuple[int, int | None]] = []
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(20)]
    async with scraper() as s:
        await s.scrape_batch(urls, progress=lambda done, total: calls.append((done, total)))
        bar = await s.scrape_batch(urls[:3], progress=True)  # tqdm.auto, on stderr
    assert calls == [(i, 20) for i in range(1, 21)]
    assert all(r.ok for r in bar)


@pytest.mark.anyio
async def test_stats_are_a_frozen_snapshot(server: ScrapeServer, key: str) -> None:
    async with scraper(max_concurrent=3) as s:
        await s.scrape_batch(
            [server.url(0, f"/page/{key}-{i}") for i in range(20)] + [server.url(0, "/status/404")]
        )
        stats = s.stats()
    assert isinstance(stats, ScraperStats)
    assert stats.engine == "aiohttp"
    assert stats.requests == 21
    assert stats.rate_limited == 0
    assert stats.results == 21
    assert stats.failed == 1
    assert stats.status_codes == {200: 20, 404: 1}
    assert stats.errors == {"HTTPStatusError": 1}
    assert 0 < stats.latency_p50 <= stats.latency_p95 <= stats.latency_p99
    assert stats.throughput > 0
    assert stats.in_flight == 0
    platform = stats.platforms[server.platform(0)]
    assert isinstance(platform, PlatformStats)
    assert (platform.limit, platform.max_limit, platform.in_flight) == (3, 3, 0)
    assert platform.requests == 21
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.requests = 0  # type: ignore[misc]


@pytest.mark.anyio
async def test_platform_of_groups_hosts_into_one_platform(server: ScrapeServer, key: str) -> None:
    urls = [server.url(i % 3, f"/page/{key}-{i}?delay=0.03") for i in range(30)]
    async with scraper(max_concurrent=2, platform_of=lambda url: "everything") as s:
        results = await s.scrape_batch(urls)
        platforms = s.stats().platforms
    assert all(r.ok for r in results)
    assert server.total_max_concurrency == 2
    assert list(platforms) == ["everything"]


def test_results_and_responses_are_httpx_style() -> None:
    headers = httpx.Headers({"Content-Type": "application/json; charset=latin-1"})
    response = Response(200, '{"a": "é"}'.encode("latin-1"), headers, "http://h/")
    assert response.json() == {"a": "é"}
    assert response.text == '{"a": "é"}'
    assert response.encoding == "latin-1"
    assert response.raise_for_status() is response
    result = ScrapeResult(url="http://u:pw@h/", status_code=200, content=b"{}", headers=headers)
    assert result.ok
    assert result.json() == {}
    assert "pw" not in repr(result)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.status_code = 500  # type: ignore[misc]
    with pytest.raises(HTTPStatusError):
        Response(503, b"", httpx.Headers(), "http://h/").raise_for_status()


def test_raw_headers_behave_like_httpx_headers() -> None:
    import copy
    import pickle

    from leadperf._scrape._engine import RawHeaders

    raw = ((b"Content-Type", b"text/html"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"))
    expected = httpx.Headers([(k.decode(), v.decode()) for k, v in raw])
    headers = RawHeaders(raw)
    assert isinstance(headers, httpx.Headers)
    assert headers == expected
    assert repr(headers) == repr(expected)
    assert headers["content-type"] == "text/html"
    assert headers.get_list("SET-COOKIE") == ["a=1", "b=2"]
    assert headers.raw == list(raw)
    assert pickle.loads(pickle.dumps(headers)) == expected
    assert copy.deepcopy(headers) == expected
    headers["X-New"] = "1"
    del headers["set-cookie"]
    assert headers.multi_items() == [("content-type", "text/html"), ("x-new", "1")]
    assert len(RawHeaders(())) == 0


def test_url_fast_path_agrees_with_urlsplit() -> None:
    from leadperf.scraper import _check_url

    class Text(str):  # not exactly str: always takes the urlsplit path
        pass

    urls = [
        "http://a.com",
        "https://A.Com:8080/p?q#f",
        "http://a.com?x",
        "http://a.com:/x",
        "http://u:p@a.com/x",
        "http://[::1]:80/",
        "http://a.com /x",
        "HTTP://a.com/",
        "http://a_b.com/",
        "http://a.com\n/x",
        "http:///x",
        "http://:80/",
        " http://a.com/",
        "ftp://a.com/",
    ]
    for url in urls:
        fast, slow = _check_url(url), _check_url(Text(url))
        if isinstance(slow, InvalidURLError):
            assert isinstance(fast, InvalidURLError), url
            assert str(fast) == str(slow)
        else:
            assert fast == slow, url


@pytest.mark.anyio
async def test_progress_bar_without_tqdm_names_the_extra(
    server: ScrapeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from leadperf.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    async with scraper() as s:
        with pytest.raises(MissingDependencyError, match=r"leadperf\[progress\]"):
            await s.scrape_batch([server.url(0, "/page/x")], progress=True)
    assert server.total_hits == 0


@pytest.mark.anyio
async def test_platform_limits_override_one_platform(server: ScrapeServer, key: str) -> None:
    # Platform 0 answers in ~5 ms, so only the 50 ms spacing can hold its starts apart;
    # platform 1 answers slowly so that its requests overlap.
    urls = [
        server.url(i % 2, f"/page/{key}-{i}?delay={0.005 if i % 2 == 0 else 0.03}")
        for i in range(24)
    ]
    limits = {server.platform(0): PlatformLimits(max_concurrent=1, delay=0.05)}
    async with scraper(max_concurrent=3, limits=limits) as s:
        results = await s.scrape_batch(urls)
        stats = s.stats()
    assert all(r.ok for r in results)
    assert server.max_concurrency(0) == 1
    assert 1 < server.max_concurrency(1) <= 3  # the override is for platform 0 only
    times = sorted(t for t, _ in server.arrivals(0))
    # Starts are spaced by 50 ms; arrivals may bunch a little on a busy machine, but
    # without the spacing they would come ~5-10 ms apart.
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.03
    assert stats.platforms[server.platform(0)].min_delay == 0.05
    assert stats.platforms[server.platform(1)].min_delay == 0.0
    with pytest.raises(ConfigError):
        PlatformLimits(max_concurrent=0)
    with pytest.raises(ConfigError):
        AsyncScraper(settings=Settings(), limits={"x": "fast"})  # type: ignore[dict-item]
    assert AsyncScraper(settings=Settings(), limits={"x": 2})._new_platform("x").limit == 2


@pytest.mark.anyio
async def test_apply_settings_changes_limits_live(server: ScrapeServer, key: str) -> None:
    async with scraper(max_concurrent=1, limits={server.platform(1): 1}) as s:
        await s.fetch(server.url(0, f"/page/{key}-warm"))
        await s.fetch(server.url(1, f"/page/{key}-warm"))
        s.apply_settings(Settings().evolve(scraper={"max_concurrent": 4, "timeout": 0.2}))
        urls = [server.url(i % 2, f"/page/{key}-{i}?delay=0.03") for i in range(16)]
        results = await s.scrape_batch(urls)
        hung = await s.fetch(server.url(0, f"/hang?{key}"))
        stats = s.stats()
    assert all(r.ok for r in results)
    assert server.max_concurrency(0) == 4
    assert server.max_concurrency(1) == 1  # its own PlatformLimits win
    assert isinstance(hung.error, ScrapeTimeoutError)  # the new timeout applies
    assert stats.platforms[server.platform(0)].max_limit == 4


@pytest.mark.anyio
async def test_closing_during_scrape_iter_raises_instead_of_losing_urls(
    server: ScrapeServer, key: str
) -> None:
    urls = [server.url(0, f"/page/{key}-{i}?delay=0.02") for i in range(100)]
    seen = 0

    async def consume(s: AsyncScraper) -> None:
        nonlocal seen
        async for _ in s.scrape_iter(urls):
            seen += 1
            if seen == 3:
                await s.close()

    async with scraper(max_concurrent=2) as s:
        with pytest.raises(ClosedError):
            await consume(s)
        assert s.closed
    assert 3 <= seen < 100


def test_httpx_engine_runs_on_trio_and_asyncio_engines_say_they_cannot(
    server: ScrapeServer, key: str
) -> None:
    pytest.importorskip("trio")
    urls = [server.url(0, f"/page/{key}-{i}") for i in range(10)]
    urls.append(server.url(1, f"/throttle/{key}?n=1&retry_after=1"))

    async def main() -> tuple[list[ScrapeResult], int]:
        async with scraper(engine="httpx") as s:
            results = await s.scrape_batch(urls)
            streamed = [r async for r in s.scrape_iter(urls[:3])]
        return results, len(streamed)

    results, streamed = anyio.run(main, backend="trio")
    assert all(r.ok for r in results)
    assert results[-1].attempts == 2
    assert streamed == 3

    async def default_engine_on_trio() -> tuple[str, bool]:
        async with scraper() as s:  # no engine named: aiohttp on asyncio, httpx on trio
            result = await s.fetch(urls[0])
        return s.engine_name, result.ok

    assert anyio.run(default_engine_on_trio, backend="trio") == ("httpx", True)

    for engine in ("native", "aiohttp"):

        async def asyncio_engine_on_trio(engine: str = engine) -> None:
            async with scraper(engine=engine):
                pass

        with pytest.raises(ConfigError, match="asyncio only"):
            anyio.run(asyncio_engine_on_trio, backend="trio")


def test_sync_context_manager_through_one_portal_task(server: ScrapeServer, key: str) -> None:
    # How a facade opens and closes the scraper from sync code: one portal task.
    from leadperf._portal import get_portal

    with get_portal().wrap_async_context_manager(scraper()) as s:
        result = get_portal().call(s.fetch, server.url(0, f"/page/{key}"))
    assert result.ok
    assert s.closed


@pytest.mark.anyio
async def test_a_throttled_platform_is_logged(
    server: ScrapeServer, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leadperf")
    async with scraper() as s:
        result = await s.fetch(server.url(0, f"/throttle/{key}?n=1&retry_after=0"))
    assert result.status_code == 200
    assert result.attempts == 2
    records = [r for r in caplog.records if r.name == "leadperf.scraper"]
    assert len(records) == 1
    assert "answered 429" in records[0].getMessage()
    assert server.platform(0) in records[0].getMessage()
