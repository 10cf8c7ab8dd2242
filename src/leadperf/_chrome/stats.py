"""Frozen snapshots of a pool and its instances (public as ``leadperf.pool.PoolStats``)."""

from __future__ import annotations

import attrs

from .instance import ChromeInstance

__all__ = ["InstanceStats", "PoolStats", "instance_stats"]


@attrs.frozen
class InstanceStats:
    """One instance at the time of the snapshot. Remote instances have no pids or memory."""

    number: int
    busy: bool
    tasks: int
    age_s: float
    idle_s: float
    browser_pid: int | None
    driver_pid: int | None
    driver_port: int | None
    debug_port: int | None
    context_isolation: bool
    rss_mb: float | None
    pss_mb: float | None
    uss_mb: float | None


@attrs.frozen
class PoolStats:
    """A snapshot of a ChromePool. ``utilization`` is ``in_use / max_size`` (0..1).

    ``size`` counts running instances (``in_use + idle``; ``starting`` ones apart);
    ``memory_mb`` is each running instance's last measured PSS in MB (None where unknown).
    Latencies are in milliseconds over the last 1000 acquires (0.0 before any).
    """

    max_size: int
    size: int
    in_use: int
    idle: int
    starting: int
    waiting: int
    created: int
    recycled: int
    reaped: int
    crashed: int
    tasks: int
    waits: int
    timeouts: int
    acquire_p50_ms: float
    acquire_p95_ms: float
    utilization: float
    memory_mb: tuple[float | None, ...]
    instances: tuple[InstanceStats, ...]
    closed: bool


def instance_stats(
    inst: ChromeInstance, busy: bool, tasks: int, last_used: float, now: float
) -> InstanceStats:
    """One instance's snapshot; the lending fields come from the pool."""
    return InstanceStats(
        number=inst.number,
        busy=busy,
        tasks=tasks,
        age_s=now - inst.created_at,
        idle_s=0.0 if busy else now - last_used,
        browser_pid=inst.browser_pid,
        driver_pid=inst.driver_pid,
        driver_port=inst.driver_port,
        debug_port=inst.debug_port,
        context_isolation=inst.isolates_contexts,
        rss_mb=inst.rss_mb,
        pss_mb=inst.pss_mb,
        uss_mb=inst.uss_mb,
    )
