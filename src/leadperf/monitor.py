"""Monitoring: psutil system sampling and a metrics registry every part reports to.

:class:`SystemMonitor` samples the host and this process (CPU, memory, threads, file
descriptors, child processes such as Chrome) in a worker thread, keeps a bounded history
and summarises it. :class:`MetricsRegistry` collects the ``stats()`` snapshots of every
registered part and renders them as a flat mapping or Prometheus text exposition.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio
import attrs
import psutil

from ._core.lifecycle import SyncResource
from ._core.validate import at_least, positive_number
from .config import Settings
from .errors import ConfigError

__all__ = [
    "MetricsRegistry",
    "MonitorSummary",
    "SystemMonitor",
    "SystemSnapshot",
    "flatten_stats",
    "get_registry",
]

#: Shortest window (seconds) over which a first CPU percentage is worth reporting.
_CPU_WINDOW = 0.25

# psutil calls block briefly (they read /proc); keep them off the event loop, one at a time.
_LIMITER: anyio.CapacityLimiter | None = None


def _limiter() -> anyio.CapacityLimiter:
    global _LIMITER
    if _LIMITER is None:
        _LIMITER = anyio.CapacityLimiter(1)
    return _LIMITER


@attrs.frozen
class SystemSnapshot:
    """One sample of the host and this process. Memory in MB, CPU in percent."""

    timestamp: float
    cpu_percent: float
    memory_percent: float
    memory_used_mb: float
    memory_available_mb: float
    process_rss_mb: float
    process_cpu_percent: float
    process_threads: int
    process_open_fds: int
    children: int
    children_rss_mb: float


@attrs.frozen
class MonitorSummary:
    """Averages and peaks over the monitor's history."""

    samples: int
    cpu_percent_avg: float
    cpu_percent_max: float
    memory_percent_avg: float
    memory_percent_max: float
    process_rss_mb_max: float
    children_max: int
    children_rss_mb_max: float


class SystemMonitor(SyncResource):
    """Sample the system with psutil, in a worker thread, every ``interval`` seconds.

    ``interval`` defaults to ``settings.monitoring.metrics_interval``; ``history`` bounds
    the number of snapshots kept. Use ``async with monitor:`` (or :meth:`start` /
    :meth:`stop`) for background sampling, or call :meth:`sample` directly.

    The lifecycle is the shared one: starting opens, stopping closes (``stop``,
    ``stop_sync``, ``close`` and ``aclose`` are the same idempotent close), a closed
    monitor never starts again (:class:`ClosedError`) and its history stays readable.
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        history: int = 360,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        interval = settings.monitoring.metrics_interval if interval is None else interval
        self.interval = positive_number(interval, "interval")
        at_least(history, "history", 1, integer=True)
        self._history: deque[SystemSnapshot] = deque(maxlen=history)
        self._process = psutil.Process(os.getpid())
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # CPU percentages are deltas against the previous sample, kept here rather than in
        # psutil's cpu_percent(interval=None), whose state is per thread (samples run on
        # whichever worker thread is free, so psutil's would often compare with nothing).
        self._cpu_mark = self._cpu_now()
        self._primed_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<SystemMonitor interval={self.interval}s samples={len(self._history)}>"

    # -- sampling -------------------------------------------------------------------------

    def sample(self) -> SystemSnapshot:
        """Take one sample now (blocking, a few milliseconds) and add it to the history."""
        vm = psutil.virtual_memory()
        proc = self._process
        with proc.oneshot():
            rss = proc.memory_info().rss
            mark = self._cpu_now()
            threads = proc.num_threads()
            try:
                fds = proc.num_fds()
            except (AttributeError, psutil.Error):
                fds = 0
        children = 0
        children_rss = 0
        for child in proc.children(recursive=True):
            try:
                children_rss += child.memory_info().rss
                children += 1
            except psutil.Error:
                continue  # exited between listing and reading
        with self._lock:
            cpu, pcpu = _cpu_delta(self._cpu_mark, mark)
            self._cpu_mark = mark
        snap = SystemSnapshot(
            timestamp=time.time(),
            cpu_percent=cpu,
            memory_percent=vm.percent,
            memory_used_mb=round(vm.used / 2**20, 1),
            memory_available_mb=round(vm.available / 2**20, 1),
            process_rss_mb=round(rss / 2**20, 1),
            process_cpu_percent=pcpu,
            process_threads=threads,
            process_open_fds=fds,
            children=children,
            children_rss_mb=round(children_rss / 2**20, 1),
        )
        with self._lock:
            self._history.append(snap)
        return snap

    def _cpu_now(self) -> tuple[float, float, float, float]:
        """(host busy seconds, host total seconds, process cpu seconds, wall seconds)."""
        t = psutil.cpu_times()
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        p = self._process.cpu_times()
        return total - idle, total, p.user + p.system, time.monotonic()

    async def sample_async(self) -> SystemSnapshot:
        """Take one sample in a worker thread (never blocks the event loop).

        The first sample of a new monitor waits until ``_CPU_WINDOW`` seconds have passed
        since it was built: CPU percentages over a shorter window are noise (often 0.0).
        """
        wait = self._primed_at + _CPU_WINDOW - time.monotonic()
        if wait > 0 and not self._history:
            await anyio.sleep(wait)
        return await anyio.to_thread.run_sync(self.sample, limiter=_limiter())

    def history(self) -> list[SystemSnapshot]:
        """Snapshots kept so far, oldest first."""
        with self._lock:
            return list(self._history)

    def latest(self) -> SystemSnapshot | None:
        """The most recent snapshot, if any."""
        with self._lock:
            return self._history[-1] if self._history else None

    def latest_or_sample(self) -> SystemSnapshot:
        """The latest snapshot, or a fresh sample when there is none yet."""
        return self.latest() or self.sample()

    def summary(self) -> MonitorSummary:
        """Averages and peaks over the history (takes a sample if there is none)."""
        snaps = self.history() or [self.sample()]
        n = len(snaps)
        return MonitorSummary(
            samples=n,
            cpu_percent_avg=round(sum(s.cpu_percent for s in snaps) / n, 2),
            cpu_percent_max=max(s.cpu_percent for s in snaps),
            memory_percent_avg=round(sum(s.memory_percent for s in snaps) / n, 2),
            memory_percent_max=max(s.memory_percent for s in snaps),
            process_rss_mb_max=max(s.process_rss_mb for s in snaps),
            children_max=max(s.children for s in snaps),
            children_rss_mb_max=max(s.children_rss_mb for s in snaps),
        )

    def stats(self) -> MonitorSummary:
        """Same as :meth:`summary`; lets the monitor report like every other part."""
        return self.summary()

    # -- background sampling --------------------------------------------------------------

    # Sampling runs in a daemon thread rather than an event-loop task: psutil blocks anyway,
    # and a thread works the same whether the monitor is driven from async code, a script
    # or the shared portal (where start and stop run in different tasks).
    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sample()
            except psutil.Error:
                pass  # a transient /proc read failure must not end monitoring
            stop.wait(self.interval)

    def _open(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="leadperf-monitor", daemon=True
        )
        self._thread.start()

    def _close(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join()

    def start_sync(self) -> None:
        """Start sampling in a background thread until :meth:`stop_sync` (idempotent).

        Raises:
            ClosedError: the monitor was stopped; create a new one.
        """
        self.open()

    def stop_sync(self) -> None:
        """Stop background sampling and wait for the thread; idempotent."""
        self.close()

    async def start(self) -> None:
        """Start sampling in the background until :meth:`stop` (idempotent).

        Raises:
            ClosedError: the monitor was stopped; create a new one.
        """
        self.open()

    async def stop(self) -> None:
        """Stop background sampling; idempotent. The history stays readable."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background sampling without blocking the event loop; idempotent.

        The one close interface owners use (:class:`~leadperf._core.lifecycle.Closeable`).
        """
        if not self.closed:
            # Joining the sampling thread waits out a sample in progress: off the loop.
            await anyio.to_thread.run_sync(self.close)

    @property
    def running(self) -> bool:
        """True while background sampling runs."""
        return self._thread is not None


def _cpu_delta(
    before: tuple[float, float, float, float], after: tuple[float, float, float, float]
) -> tuple[float, float]:
    """Host and process CPU percent between two marks (process: of one core, like top)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    host = round(min(100.0, max(0.0, 100.0 * busy / total)), 1) if total > 0 else 0.0
    wall = after[3] - before[3]
    proc = round(max(0.0, 100.0 * (after[2] - before[2]) / wall), 1) if wall > 0 else 0.0
    return host, proc


# -- metrics registry -----------------------------------------------------------------------

Source = Callable[[], Any]
_NAME_OK = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SECRET_KEYS = ("password", "secret", "token", "dsn", "url")


def flatten_stats(value: Any, prefix: str = "") -> dict[str, float]:
    """Flatten an attrs snapshot / mapping of numbers into ``{"a_b_c": number}``.

    Booleans become 0/1; strings, ``None`` and keys that could hold credentials are
    dropped; nested mappings and attrs classes are joined with ``_``.
    """
    out: dict[str, float] = {}
    if attrs.has(type(value)):
        value = attrs.asdict(value, recurse=False)
    if isinstance(value, Mapping):
        for key, item in value.items():
            k = re.sub(r"[^a-zA-Z0-9_]", "_", str(key))
            if any(s in k.lower() for s in _SECRET_KEYS):
                continue
            out.update(flatten_stats(item, f"{prefix}_{k}" if prefix else k))
        return out
    if isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, int | float) and prefix:
        f = float(value)
        if math.isfinite(f):
            out[prefix] = f
    return out


class MetricsRegistry:
    """Named sources of ``stats()`` snapshots, collected on demand.

    ``registry.register("cache", cache.stats)``; :meth:`collect` returns every source's
    flattened numbers, :meth:`to_prometheus` the Prometheus text exposition with the
    ``leadperf_`` prefix. A source that raises is reported under ``errors``, not raised.
    """

    def __init__(self, prefix: str = "leadperf") -> None:
        if not _NAME_OK.match(prefix):
            raise ConfigError(f"metrics prefix must match {_NAME_OK.pattern}, got {prefix!r}")
        self.prefix = prefix
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}

    def register(self, name: str, source: Source) -> None:
        """Add (or replace) the source called ``name``."""
        if not _NAME_OK.match(name):
            raise ConfigError(f"metrics source name must match {_NAME_OK.pattern}, got {name!r}")
        with self._lock:
            self._sources[name] = source

    def unregister(self, name: str) -> None:
        """Remove the source called ``name`` if present."""
        with self._lock:
            self._sources.pop(name, None)

    def names(self) -> list[str]:
        """Registered source names, sorted."""
        with self._lock:
            return sorted(self._sources)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def collect(self) -> dict[str, dict[str, float]]:
        """``{source: {metric: value}}`` for every registered source."""
        with self._lock:
            sources = dict(self._sources)
        out: dict[str, dict[str, float]] = {}
        errors: dict[str, str] = {}
        for name, source in sorted(sources.items()):
            try:
                out[name] = flatten_stats(source())
            except Exception as exc:  # a broken source must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}"
        self.errors = errors
        return out

    def to_prometheus(self) -> str:
        """Prometheus text exposition (format 0.0.4) of :meth:`collect`, one gauge per
        number, written by the ``prometheus_client`` library."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.registry import Collector

        data = self.collect()
        errors = len(self.errors)
        prefix = self.prefix

        class _Snapshot(Collector):
            def collect(self) -> Iterator[GaugeMetricFamily]:
                for source, metrics in data.items():
                    for metric, value in sorted(metrics.items()):
                        name = f"{prefix}_{source}_{metric}"
                        yield GaugeMetricFamily(name, f"{source} {metric}", value=value)
                yield GaugeMetricFamily(
                    f"{prefix}_source_errors", "metric sources that failed", value=errors
                )

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot())
        return generate_latest(registry).decode("utf-8")


_registry: MetricsRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> MetricsRegistry:
    """The process-wide default registry."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = MetricsRegistry()
        return _registry
