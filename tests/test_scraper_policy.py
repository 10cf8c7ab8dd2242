"""Pure parts of the scraper, tested without waiting: retry timing, Retry-After, slots."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from leadperf import Settings
from leadperf._scrape._platform import (
    MIN_ADAPTIVE_DELAY,
    RECOVER_AFTER,
    Platform,
    http_date,
    parse_retry_after,
    platform_key,
)
from leadperf.errors import (
    ConfigError,
    HTTPStatusError,
    ScrapeConnectionError,
    ScrapeTimeoutError,
)
from leadperf.scraper import AsyncScraper, Limits, PlatformLimits, RetryPolicy


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=3.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(backoff=1.0, max_backoff=30.0)
    assert jittered.delay(3, rand=lambda: 0.0) == 2.0  # half of 4 s
    assert jittered.delay(3, rand=lambda: 1.0) == 4.0
    assert jittered.delay(3, retry_after=7.5) == 7.5  # Retry-After wins


def test_default_retry_on() -> None:
    policy = RetryPolicy()
    for status in (408, 429, 500, 502, 503, 504, 599):
        assert policy.should_retry(HTTPStatusError("x", status_code=status))
    for status in (400, 401, 403, 404, 410, 422):
        assert not policy.should_retry(HTTPStatusError("x", status_code=status))
    assert policy.should_retry(ScrapeConnectionError("x"))
    assert policy.should_retry(ScrapeTimeoutError("x"))
    assert not policy.should_retry(ValueError("parser bug"))
    custom = RetryPolicy(retry_on={404, KeyError})
    assert custom.should_retry(HTTPStatusError("x", status_code=404))
    assert custom.should_retry(KeyError("k"))
    assert not custom.should_retry(ScrapeTimeoutError("x"))


def test_policy_is_frozen_comparable_and_printable() -> None:
    policy = RetryPolicy()
    assert policy == RetryPolicy()
    assert policy.evolve(attempts=5).attempts == 5
    assert "5xx" in repr(policy)
    assert "ScrapeTimeoutError" in repr(policy)
    with pytest.raises(AttributeError):
        policy.attempts = 9  # type: ignore[misc]
    with pytest.raises(ConfigError) as info:
        policy.evolve(attempts=0)
    assert info.value.key == "attempts"


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(http_date(now + 30), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(http_date(now - 30), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    for bad in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2015"):
        assert parse_retry_after(bad) is None


def test_platform_key() -> None:
    assert platform_key("https", "Example.COM") == "example.com"
    assert platform_key("https", "example.com:443") == "example.com"
    assert platform_key("http", "example.com:80") == "example.com"
    assert platform_key("http", "example.com:8080") == "example.com:8080"
    assert platform_key("https", "user:pw@example.com") == "example.com"


def test_slots_are_handed_out_fifo_and_exactly() -> None:
    p = Platform("p", 2)
    assert p.try_acquire()
    assert p.try_acquire()
    assert not p.try_acquire()
    order: list[str] = []

    def waiter(name: str, wants: bool = True) -> Callable[[], bool]:
        def grant() -> bool:
            if wants:
                order.append(name)
            return wants

        return grant

    p.add_waiter("a", waiter("a"))
    p.add_waiter("b", waiter("b", wants=False))  # gave up: the slot moves on
    p.add_waiter("c", waiter("c"))
    p.release()
    assert order == ["a"]
    assert p.in_flight == 2
    p.release()
    assert order == ["a", "c"]
    assert p.in_flight == 2
    p.release()
    p.release()
    assert p.in_flight == 0
    assert p.try_acquire()  # nobody waits any more


def test_throttle_halves_slots_and_success_restores_them() -> None:
    p = Platform("p", 8)
    now = time.monotonic()
    p.on_throttle(now, retry_after=2.0)
    assert p.limit == 4
    assert p.adaptive_delay == MIN_ADAPTIVE_DELAY
    assert p.blocked_until == pytest.approx(now + 2.0)
    p.on_throttle(now + 0.1, None)  # an echo of the same burst counts once
    assert p.limit == 4
    # A reserved start waits for the block, then spacing applies.
    assert p.reserve(0.0, now) == pytest.approx(2.0)
    assert p.reserve(0.0, now) == pytest.approx(2.0 + MIN_ADAPTIVE_DELAY)
    for _ in range(RECOVER_AFTER * 4):
        p.on_success()
    assert p.limit == 8
    assert p.adaptive_delay == 0.0


def test_timeouts_in_a_row_throttle() -> None:
    p = Platform("p", 4)
    now = time.monotonic()
    p.on_timeout(now)
    p.on_success()  # a success breaks the run
    p.on_timeout(now)
    p.on_timeout(now)
    assert p.limit == 4
    p.on_timeout(now)
    assert p.limit == 2
    assert p.throttles == 1


def test_spacing_reserves_distinct_start_times() -> None:
    p = Platform("p", 5)
    now = 100.0
    waits = [p.reserve(0.5, now) for _ in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]
    q = Platform("q", 5)
    assert [q.reserve(0.0, now) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_many_hosts_never_get_two_limiters_while_queued() -> None:
    from leadperf import Settings
    from leadperf.scraper import AsyncScraper

    scraper = AsyncScraper(settings=Settings())
    first = scraper._job(0, "http://host-0.example/")
    jobs = [scraper._job(i, f"http://host-{i}.example/") for i in range(1, 2_500)]
    # host-0 still has a queued job: it keeps its one platform (and its one limit).
    again = scraper._job(2_500, "http://host-0.example/a")
    assert first.platform is again.platform
    for job in [first, again, *jobs]:
        assert job.platform is not None
        job.platform.pending -= 1  # as if every job finished
    for i in range(2_500, 5_000):
        scraper._job(i, f"http://other-{i}.example/").platform.pending -= 1  # type: ignore[union-attr]
    assert len(scraper._platforms) < 4_000  # idle platforms were forgotten


@pytest.mark.parametrize(
    ("build", "key", "text"),
    [
        (lambda: Limits(max_body_size=0), "max_body_size", "must be an integer > 0, got 0"),
        (lambda: Limits(max_redirects=True), "max_redirects", "must be an integer > 0"),
        (lambda: RetryPolicy(attempts=0), "attempts", "must be an integer >= 1, got 0"),
        (lambda: RetryPolicy(backoff=float("nan")), "backoff", "must be a number >= 0"),
        (lambda: PlatformLimits(delay=-1), "delay", "must be a number >= 0, got -1"),
        (lambda: PlatformLimits(max_concurrent=0), "max_concurrent", "an integer >= 1"),
        (lambda: AsyncScraper(settings=Settings(), timeout=0), "timeout", "a number > 0"),
        (
            lambda: AsyncScraper(settings=Settings(), max_connections=1.5),  # type: ignore[arg-type]
            "max_connections",
            "must be an integer > 0, got 1.5",
        ),
        (
            lambda: AsyncScraper(settings=Settings(), cookies=1),  # type: ignore[arg-type]
            "cookies",
            "must be True or False, got 1",
        ),
    ],
)
def test_policy_values_name_the_bad_argument(
    build: Callable[[], object], key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert text in str(info.value)
