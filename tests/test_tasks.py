"""TaskOptimizer: priorities with fairness, backpressure, retries, stats, lifecycle."""

from __future__ import annotations

import anyio
import pytest

from leadperf import ClosedError, ConfigError, PerformanceOptimizer, RetryPolicy, Settings
from leadperf.optimize import TaskOptimizer, TaskQueueFullError
from leadperf.optimize.tasks import HIGH, LOW, NORMAL

pytestmark = pytest.mark.anyio
NO_WAIT = RetryPolicy(attempts=3, backoff=0.0, jitter=False, retry_on={ConnectionError})


async def test_weighted_fairness_interleaves_priorities() -> None:
    order: list[int] = []
    gate = anyio.Event()

    async def blocker() -> None:
        await gate.wait()

    async def job(priority: int) -> None:
        order.append(priority)

    async with TaskOptimizer(workers=1, max_queued=100, settings=Settings()) as tasks:
        await tasks.submit(blocker)
        with anyio.fail_after(5):
            while tasks.stats().running == 0:
                await anyio.sleep(0.001)
        for _ in range(8):
            for prio in (LOW, NORMAL, HIGH):
                await tasks.submit(job, prio, priority=prio)
        gate.set()
        await tasks.join()
    first = order[:7]
    # Weights 4/2/1: every window of seven picks holds 4 HIGH, 2 NORMAL and 1 LOW,
    # so LOW work is never starved while HIGH work waits.
    assert (first.count(HIGH), first.count(NORMAL), first.count(LOW)) == (4, 2, 1)
    assert sorted(order) == sorted([LOW, NORMAL, HIGH] * 8)
    assert tasks.stats().done_by_priority == {"0": 8, "1": 9, "2": 8}  # + the blocker


async def test_backpressure_waits_and_nowait_refuses() -> None:
    gate = anyio.Event()
    started = anyio.Event()

    async def blocker() -> None:
        started.set()
        await gate.wait()

    async def noop() -> int:
        return 1

    async with TaskOptimizer(workers=1, max_queued=2, settings=Settings()) as tasks:
        await tasks.submit(blocker)
        await started.wait()
        await tasks.submit(noop)
        await tasks.submit(noop)
        with pytest.raises(TaskQueueFullError, match="max_queued"):
            tasks.submit_nowait(noop)
        assert tasks.stats().rejected == 1
        waited = False
        with anyio.move_on_after(0.2):
            await tasks.submit(noop)  # the queue is full: this waits
            waited = True
        assert not waited
        assert tasks.stats().queued == 2
        gate.set()
        with anyio.fail_after(5):
            handle = await tasks.submit(noop)  # room again once the worker moves on
            assert await handle.result() == 1
    stats = tasks.stats()
    assert (stats.done, stats.failed, stats.queued, stats.running) == (4, 0, 0, 0)
    assert stats.closed


async def test_retries_follow_the_retry_policy() -> None:
    calls = {"flaky": 0, "broken": 0}

    async def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    async def broken() -> None:
        calls["broken"] += 1
        raise ValueError("not retryable")

    async with TaskOptimizer(workers=2, retry=NO_WAIT, settings=Settings()) as tasks:
        good = await tasks.submit(flaky)
        bad = await tasks.submit(broken)
        assert await good.result() == "ok"
        with pytest.raises(ValueError, match="not retryable"):
            await bad.result()
        once = await tasks.submit(flaky, retry=RetryPolicy(attempts=1))
        assert await once.result() == "ok"  # third call succeeds at once
    assert (good.attempts, bad.attempts) == (3, 1)
    assert calls == {"flaky": 4, "broken": 1}
    stats = tasks.stats()
    assert (stats.done, stats.failed, stats.retried) == (2, 1, 2)


async def test_wait_percentiles_measure_queue_time() -> None:
    async def slow() -> None:
        await anyio.sleep(0.05)

    async with TaskOptimizer(workers=1, settings=Settings()) as tasks:
        for _ in range(5):
            await tasks.submit(slow)
    stats = tasks.stats()
    assert stats.done == 5
    assert stats.wait_p95_ms >= 150  # the fifth job waited for four others
    assert stats.wait_p50_ms <= stats.wait_p95_ms


async def test_leaving_on_error_cancels_queued_work() -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    tasks = TaskOptimizer(workers=1, settings=Settings())
    handles = []

    async def fail_inside() -> None:
        async with tasks:
            handles.append(await tasks.submit(forever))
            handles.append(await tasks.submit(forever))
            await anyio.sleep(0.01)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    running, queued = handles
    for handle in (running, queued):
        with pytest.raises(ClosedError):
            await handle.result()
    assert tasks.stats().cancelled == 2
    with pytest.raises(ClosedError):
        await tasks.submit(forever)


async def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="workers"):
        TaskOptimizer(workers=0, settings=Settings())
    with pytest.raises(ConfigError, match="max_queued"):
        TaskOptimizer(max_queued=-1, settings=Settings())
    async with TaskOptimizer(settings=Settings()) as tasks:
        with pytest.raises(ConfigError, match="priority"):
            await tasks.submit(anyio.sleep, 0, priority=-1)
    with pytest.raises(ClosedError, match="not open"):
        TaskOptimizer(settings=Settings()).submit_nowait(anyio.sleep, 0)


async def test_facade_reports_tasks_in_analysis_and_metrics() -> None:
    settings = Settings(profile="memory_focused").evolve(monitoring={"enabled": False})
    async with PerformanceOptimizer(settings) as perf:
        assert perf.tasks.workers == 2  # from the profile
        handles = [await perf.tasks.submit(anyio.sleep, 0) for _ in range(3)]
        for handle in handles:
            await handle.result()
        analysis = await perf.run_performance_analysis()
        text = await perf.metrics_prometheus()
    assert analysis["tasks"]["done"] == 3
    assert analysis["metrics"]["tasks"]["done"] == 3.0
    assert "leadperf_tasks_wait_p95_ms" in text
