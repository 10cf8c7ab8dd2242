"""``cached``: results cached, single-flight across concurrent callers, errors shared."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from leadperf import Settings, cached
from leadperf.cache import MemoryCache, RedisCache
from leadperf.errors import ConfigError

pytestmark = pytest.mark.anyio

SETTINGS = Settings()


async def _fifty_callers(cache: Any) -> None:
    calls = 0

    @cached(cache, ttl=30)
    async def enrich(domain: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        return {"domain": domain, "employees": 42}

    results: list[Any] = []

    async def call() -> None:
        results.append(await enrich("example.com"))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call)
    assert calls == 1
    assert results == [{"domain": "example.com", "employees": 42}] * 50
    assert await enrich("example.com") == {"domain": "example.com", "employees": 42}
    assert calls == 1
    await enrich("other.com")
    assert calls == 2


async def test_single_flight_memory() -> None:
    await _fifty_callers(MemoryCache(settings=SETTINGS))


@pytest.mark.redis
async def test_single_flight_redis(redis_url: str, unique_name: str) -> None:
    async with RedisCache(redis_url, namespace=unique_name, settings=SETTINGS) as c:
        await _fifty_callers(c)
        assert c.stats().sets == 2
        await c.clear()


async def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache = MemoryCache(settings=SETTINGS)
    calls = 0

    @cached(cache)
    async def flaky() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.02)
        if calls == 1:
            raise RuntimeError("upstream down")
        return 7

    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await flaky()
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(call)
    assert calls == 1
    assert len(errors) == 10
    assert await flaky() == 7
    assert calls == 2


async def test_cancelled_computation_lets_a_waiter_compute() -> None:
    cache = MemoryCache(settings=SETTINGS)
    calls = 0
    started = anyio.Event()

    @cached(cache)
    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(0.1)
        return "done"

    result: list[str] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await slow()

    async def follower() -> None:
        result.append(await slow())

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await started.wait()
        tg.start_soon(follower)
        await anyio.sleep(0.01)
        leader_scope.cancel()
    assert result == ["done"]
    assert calls == 2


async def test_keys_format_string_callable_and_default() -> None:
    cache = MemoryCache(settings=SETTINGS)

    @cached(cache, key="lead:{email}")
    async def by_email(email: str, fresh: bool = False) -> str:
        return email.upper()

    @cached(cache, key=lambda a, b: f"sum:{a}+{b}")
    async def add(a: int, b: int) -> int:
        return a + b

    @cached(cache)
    async def none_result(x: int) -> int | None:
        return None

    assert await by_email("a@x.io") == "A@X.IO"
    assert await cache.get("lead:a@x.io") == "A@X.IO"
    assert await add(1, 2) == 3
    assert await cache.get("sum:1+2") == 3
    assert await none_result(1) is None
    assert cache.stats().sets == 3
    assert await none_result(1) is None
    assert cache.stats().sets == 3  # None is cached too
    with pytest.raises(ConfigError):
        cached(cache, ttl=-1)

    with pytest.raises(ConfigError, match="async"):

        @cached(cache)  # type: ignore[arg-type]
        def sync() -> int:
            return 1


async def test_reexported_from_package() -> None:
    import leadperf
    from leadperf.cache import cached as cache_cached

    assert leadperf.cached is cache_cached


async def test_result_too_large_for_the_cache_is_returned_uncached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from leadperf.cache import ValueTooLargeError

    cache = MemoryCache(max_bytes=100_000, settings=Settings())
    calls = 0

    @cached(cache, key="page:{n}")
    async def page(n: int) -> bytes:
        nonlocal calls
        calls += 1
        return b"x" * n

    caplog.set_level("WARNING", logger="leadperf.cache")
    assert await page(50_000) == b"x" * 50_000  # over a quarter of max_bytes
    assert await page(50_000) == b"x" * 50_000
    assert calls == 2  # computed each time, never stored
    assert not await cache.exists("page:50000")
    assert "not cached" in caplog.text
    assert await page(100) == b"x" * 100
    assert await page(100) == b"x" * 100
    assert calls == 3
    with pytest.raises(ValueTooLargeError):
        await cache.set("direct", b"x" * 50_000)
