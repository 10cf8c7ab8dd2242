"""ChromePool.trim(): idle instances above ``keep`` are closed with their whole process
tree; an instance lent to a task never is. Real headless Chromium, pools of two."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from leadperf.errors import ConfigError
from leadperf.pool import ChromePool, InstanceStats


@pytest.fixture
def pool(chrome_paths: tuple[str, str]) -> Iterator[ChromePool]:
    binary, driver = chrome_paths
    with ChromePool(pool_size=2, idle_timeout=300, chrome_binary=binary, driver_path=driver) as two:
        yield two


def tree(inst: InstanceStats) -> list[psutil.Process]:
    """chromedriver, the browser and every process under them."""
    assert inst.driver_pid is not None
    root = psutil.Process(inst.driver_pid)
    return [root, *root.children(recursive=True)]


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def start_two(pool: ChromePool) -> tuple[Any, Any]:
    """Two tasks at once, so two instances start; both drivers load a page."""
    first = pool.acquire("first")
    second = pool.acquire("second")
    for name, driver in (("first", first), ("second", second)):
        driver.get(f"data:text/html,<title>{name}</title>")
        assert driver.title == name
    assert pool.stats().size == 2
    return first, second


def by_browser(pool: ChromePool) -> dict[int, InstanceStats]:
    out: dict[int, InstanceStats] = {}
    for inst in pool.stats().instances:
        assert inst.browser_pid is not None
        out[inst.browser_pid] = inst
    return out


def test_trim_to_one_closes_the_least_recently_used_idle_tree(pool: ChromePool) -> None:
    first, second = start_two(pool)
    pool.release("first", first)  # used longest ago
    time.sleep(0.01)  # distinct last-used times on coarse clocks
    pool.release("second", second)
    instances = pool.stats().instances
    colder = max(instances, key=lambda i: i.idle_s)
    warmer = next(i for i in instances if i is not colder)
    cold_tree, warm_tree = tree(colder), tree(warmer)
    assert len(cold_tree) >= 3, "chromedriver, the browser and its children"
    assert all(running(p) for p in cold_tree + warm_tree)

    assert pool.trim(2) == 0  # nothing above keep
    assert pool.trim(1) == 1

    assert wait_for(lambda: not any(running(p) for p in cold_tree))
    assert all(running(p) for p in warm_tree), "the instance kept is untouched"
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.reaped) == (1, 1, 1)
    assert [i.browser_pid for i in stats.instances] == [warmer.browser_pid]
    with pool.session("after") as driver:  # the kept instance serves the next task
        driver.get("data:text/html,<title>after</title>")
        assert driver.title == "after"
    assert pool.stats().created == 2  # no new browser was needed


def test_trim_never_closes_a_busy_instance(pool: ChromePool) -> None:
    held, other = start_two(pool)
    pool.release("second", other)
    instances = by_browser(pool)
    busy = next(i for i in instances.values() if i.busy)
    idle = next(i for i in instances.values() if not i.busy)
    busy_tree, idle_tree = tree(busy), tree(idle)

    assert pool.trim(0) == 1  # keep nothing: only the idle one can go
    assert wait_for(lambda: not any(running(p) for p in idle_tree))
    assert all(running(p) for p in busy_tree)
    held.get("data:text/html,<title>still mine</title>")  # the task's browser still works
    assert held.title == "still mine"
    assert pool.trim(0) == 0  # the busy one stays busy and kept
    pool.release("first", held)
    assert pool.trim() == 0  # default keep is pool_size (2): one running is within it
    pool.pool_size = 1  # as the memory_focused profile lowers it live
    assert pool.trim() == 0
    assert pool.trim(0) == 1
    assert wait_for(lambda: not any(running(p) for p in busy_tree))
    assert pool.stats().size == 0


def test_trim_refuses_a_bad_keep_and_is_a_no_op_after_close(
    chrome_paths: tuple[str, str],
) -> None:
    binary, driver = chrome_paths
    pool = ChromePool(pool_size=1, chrome_binary=binary, driver_path=driver)
    for bad in (-1, True, 1.5, "1"):
        with pytest.raises(ConfigError, match="keep") as err:
            pool.trim(bad)  # type: ignore[arg-type]
        assert err.value.key == "keep"
    pool.close()
    assert pool.trim(0) == 0
