from __future__ import annotations

import subprocess
import sys
import threading

import anyio
import attrs
import pytest

from leadperf import ClosedError, ConfigError
from leadperf._core.lifecycle import Closeable, aclose_resource
from leadperf.monitor import MetricsRegistry, SystemMonitor, flatten_stats, get_registry


def test_sample_reads_real_system_values() -> None:
    mon = SystemMonitor(interval=1)
    snap = mon.sample()
    assert 0 < snap.memory_percent < 100
    assert snap.memory_available_mb > 0
    assert snap.process_rss_mb > 10  # a Python interpreter with pytest loaded
    assert snap.process_threads >= 1
    assert mon.latest() == snap


def test_children_are_counted() -> None:
    mon = SystemMonitor(interval=1)
    before = mon.sample().children
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        during = mon.sample()
        assert during.children == before + 1
        assert during.children_rss_mb > 1
    finally:
        child.kill()
        child.wait()
    assert mon.sample().children == before


def test_history_is_bounded_and_summarised() -> None:
    mon = SystemMonitor(interval=1, history=3)
    for _ in range(5):
        mon.sample()
    assert len(mon.history()) == 3
    summary = mon.summary()
    assert summary.samples == 3
    assert summary.cpu_percent_max >= summary.cpu_percent_avg


@pytest.mark.anyio
async def test_background_sampling_runs_and_stops() -> None:
    mon = SystemMonitor(interval=0.05)
    async with mon:
        assert mon.running
        with anyio.fail_after(5):
            while len(mon.history()) < 3:
                await anyio.sleep(0.02)
    assert not mon.running
    count = len(mon.history())
    await anyio.sleep(0.15)
    assert len(mon.history()) == count  # nothing samples after stop
    await mon.stop()  # idempotent
    with pytest.raises(ClosedError):
        await mon.start()


@pytest.mark.anyio
async def test_monitor_closes_through_the_one_lifecycle_interface() -> None:
    mon = SystemMonitor(interval=0.05)
    assert isinstance(mon, Closeable)
    await mon.start()
    with anyio.fail_after(5):
        while not mon.history():
            await anyio.sleep(0.02)
    await aclose_resource(mon)  # how the facade closes every part
    assert mon.closed
    assert not mon.running
    assert not [t for t in threading.enumerate() if t.name == "leadperf-monitor"]
    await mon.aclose()  # idempotent
    assert mon.history()  # what was sampled stays readable
    with pytest.raises(ClosedError, match="cannot be reopened"):
        mon.start_sync()


def test_sync_with_starts_and_closes_the_sampling_thread() -> None:
    with SystemMonitor(interval=0.05) as mon:
        assert mon.running
    assert mon.closed
    assert not mon.running
    assert not [t for t in threading.enumerate() if t.name == "leadperf-monitor"]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="interval"):
        SystemMonitor(interval=0)
    with pytest.raises(ConfigError, match="history"):
        SystemMonitor(interval=1, history=0)


@attrs.frozen
class _Snap:
    hits: int
    hit_rate: float
    healthy: bool
    name: str
    redis_url: str
    nested: dict[str, int]


def test_flatten_drops_strings_and_secrets() -> None:
    snap = _Snap(3, 0.75, True, "x", "redis://:pw@h", {"a": 1})
    assert flatten_stats(snap) == {"hits": 3.0, "hit_rate": 0.75, "healthy": 1.0, "nested_a": 1.0}


def test_registry_collects_and_renders_prometheus() -> None:
    reg = MetricsRegistry()
    counter = {"n": 0}

    def source() -> dict[str, int]:
        counter["n"] += 1
        return {"requests": counter["n"]}

    def broken() -> dict[str, int]:
        raise RuntimeError("boom")

    reg.register("scraper", source)
    reg.register("broken", broken)
    assert reg.collect() == {"scraper": {"requests": 1.0}}
    assert "broken" in reg.errors
    text = reg.to_prometheus()
    assert "# TYPE leadperf_scraper_requests gauge" in text
    # Parsed back by prometheus_client's own parser: valid exposition, right values.
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values == {"leadperf_scraper_requests": 2.0, "leadperf_source_errors": 1.0}
    reg.unregister("broken")
    assert reg.names() == ["scraper"]
    with pytest.raises(ConfigError):
        reg.register("bad name", source)
    assert get_registry() is get_registry()
