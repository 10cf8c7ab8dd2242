"""Memory management: garbage-collector tuning, ``gc.freeze()`` after warm-up, and a
:class:`MemoryGuard` that reacts when the process or its container nears a limit.

The guard's limit is ``settings.memory.limit_mb`` (compared with this process's RSS plus
its children's, which includes Chrome), or else the container's cgroup limit (compared
with the cgroup's own usage). With neither, the guard stays idle.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs
import psutil

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "MemoryGuard",
    "MemoryGuardStats",
    "MemoryReading",
    "cgroup_memory",
    "freeze_after_warmup",
]

log = logging.getLogger("leadperf.memory")

# cgroup v2 writes "max" for no limit; v1 writes a huge number near 2**63.
_NO_LIMIT = 2**60
_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    value = int(text)
    return value if 0 < value < _NO_LIMIT else None


def cgroup_memory(root: Path | None = None) -> tuple[int, int] | None:
    """``(used_bytes, limit_bytes)`` of this container's memory cgroup, or None.

    Reads cgroup v2 (``memory.current``/``memory.max``) or v1 (``memory.usage_in_bytes``/
    ``memory.limit_in_bytes``).

    Args:
        root: the cgroup directory (default: this process's own).

    Returns:
        ``(used, limit)`` in bytes; None when there is no limit or no cgroup to read.
    """
    for base, used_name, limit_name in (
        (root or _CGROUP_V2, "memory.current", "memory.max"),
        (root or _CGROUP_V1, "memory.usage_in_bytes", "memory.limit_in_bytes"),
    ):
        limit = _read_int(base / limit_name)
        used = _read_int(base / used_name)
        if limit is not None and used is not None:
            return used, limit
    return None


def process_tree_rss() -> int:
    """RSS in bytes of this process and its children (Chrome, chromedriver).

    Returns:
        The summed resident set size; children that exit while read are skipped.
    """
    proc = psutil.Process(os.getpid())
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return total


_freeze_lock = threading.Lock()
_frozen = False


def freeze_after_warmup() -> int:
    """Collect once, then ``gc.freeze()`` what survived; once per process.

    After start-up, modules, settings and pools live as long as the process; freezing
    them keeps every later collection from scanning them again (and keeps forked workers
    from touching their pages).

    Returns:
        ``gc.get_freeze_count()``.
    """
    global _frozen
    with _freeze_lock:
        if not _frozen:
            gc.collect()
            gc.freeze()
            _frozen = True
        return gc.get_freeze_count()


@attrs.frozen
class MemoryReading:
    """One measurement: bytes used against the limit, and where both came from."""

    used_mb: float
    limit_mb: float | None
    ratio: float
    source: str  # "configured" | "cgroup" | "none"


@attrs.frozen
class MemoryGuardStats:
    """The guard's state: last reading, threshold, how often it acted."""

    enabled: bool
    source: str
    used_mb: float
    limit_mb: float | None
    ratio: float
    guard_ratio: float
    triggered: int
    armed: bool
    gc_thresholds: tuple[int, int, int]
    gc_frozen: int


Action = Callable[[MemoryReading], Awaitable[None]]


class MemoryGuard:
    """Calls ``on_pressure`` when memory use reaches ``guard_ratio`` of the limit.

    Args:
        on_pressure: async callback given the reading (the facade applies the
            ``memory_focused`` profile and trims caches and the Chrome pool).
        limit_mb: the limit; default ``settings.memory.limit_mb``, else the cgroup's.
        guard_ratio: fraction of the limit that triggers (default from settings, 0.9).
        interval: seconds between checks in :meth:`run`.
        measure: returns ``(used_bytes, limit_bytes | None, source)``; for tests and
            hosts with their own accounting.

    The guard fires once per crossing: it re-arms when use falls below
    ``guard_ratio - 0.05`` of the limit, so a host hovering at the line is not hammered.
    """

    def __init__(
        self,
        on_pressure: Action,
        *,
        limit_mb: float | None = None,
        guard_ratio: float | None = None,
        interval: float | None = None,
        measure: Callable[[], tuple[int, int | None, str]] | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.from_env()
        mem = settings.memory
        limit = mem.limit_mb if limit_mb is None else limit_mb
        ratio = mem.guard_ratio if guard_ratio is None else guard_ratio
        every = mem.check_interval if interval is None else interval
        if limit is not None and (isinstance(limit, bool) or not limit > 0):
            raise ConfigError(f"limit_mb: must be a number > 0, got {limit!r}", key="limit_mb")
        if isinstance(ratio, bool) or not 0 < ratio <= 1:
            raise ConfigError(f"guard_ratio: must be in (0, 1], got {ratio!r}", key="guard_ratio")
        if isinstance(every, bool) or not every > 0:
            raise ConfigError(f"interval: must be > 0 seconds, got {every!r}", key="interval")
        self._on_pressure = on_pressure
        self.limit_mb = None if limit is None else float(limit)
        self.guard_ratio = float(ratio)
        self.interval = float(every)
        self._measure = measure or self._default_measure
        self._armed = True
        self._triggered = 0
        self._last = MemoryReading(0.0, self.limit_mb, 0.0, "none")

    def _default_measure(self) -> tuple[int, int | None, str]:
        if self.limit_mb is not None:
            return process_tree_rss(), int(self.limit_mb * 2**20), "configured"
        cgroup = cgroup_memory()
        if cgroup is not None:
            return cgroup[0], cgroup[1], "cgroup"
        return process_tree_rss(), None, "none"

    @property
    def enabled(self) -> bool:
        """True when a limit is configured or the container has one."""
        return self.limit_mb is not None or cgroup_memory() is not None

    def read(self) -> MemoryReading:
        """Measure now (blocking, a few milliseconds).

        Returns:
            A :class:`MemoryReading`.
        """
        used, limit, source = self._measure()
        reading = MemoryReading(
            used_mb=round(used / 2**20, 1),
            limit_mb=None if limit is None else round(limit / 2**20, 1),
            ratio=round(used / limit, 4) if limit else 0.0,
            source=source,
        )
        self._last = reading
        return reading

    async def check(self) -> MemoryReading:
        """Measure in a worker thread; run ``on_pressure`` when the line is crossed.

        Returns:
            The :class:`MemoryReading` taken.

        Raises:
            Exception: whatever ``on_pressure`` raises (:meth:`run` logs it and goes on).
        """
        reading = await anyio.to_thread.run_sync(self.read)
        if reading.limit_mb is None:
            return reading
        if reading.ratio >= self.guard_ratio and self._armed:
            self._armed = False
            self._triggered += 1
            log.warning(
                "memory at %.0f%% of its %s limit (%.0f of %.0f MB): applying memory_focused",
                reading.ratio * 100,
                reading.source,
                reading.used_mb,
                reading.limit_mb,
            )
            await self._on_pressure(reading)
        elif reading.ratio < self.guard_ratio - 0.05:
            self._armed = True
        return reading

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled; a failed check is logged."""
        while True:
            try:
                await self.check()
            except Exception as exc:  # one failed reading or action must not end the guard
                log.warning("memory guard check failed: %s: %s", type(exc).__name__, exc)
            await anyio.sleep(self.interval)

    def stats(self) -> MemoryGuardStats:
        """A frozen snapshot of the last reading and the GC state.

        Returns:
            A :class:`MemoryGuardStats`.
        """
        t = gc.get_threshold()
        last = self._last
        return MemoryGuardStats(
            enabled=self.limit_mb is not None or last.source == "cgroup",
            source=last.source,
            used_mb=last.used_mb,
            limit_mb=last.limit_mb,
            ratio=last.ratio,
            guard_ratio=self.guard_ratio,
            triggered=self._triggered,
            armed=self._armed,
            gc_thresholds=(t[0], t[1], t[2]),
            gc_frozen=gc.get_freeze_count(),
        )
