"""The background job that removes expired entries from a persistent cache.

Each persistent backend (PostgreSQL, SQLite) runs one while open: a task that sleeps
``interval`` seconds with +-20% jitter (so many processes started together do not purge
together), then calls the backend's ``run_once``. The backend makes sure only one process
purges at a time (an advisory lock, a lease row) and returns None when another one holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ConfigError

__all__ = ["ExpiryJob", "check_interval"]

_log = logging.getLogger("leadperf.cache")


def check_interval(value: Any) -> float | None:
    """``cleanup_interval``: None (no job) or seconds > 0; else ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"cleanup_interval: must be seconds > 0, or None to turn the expiry job off, "
            f"got {value!r}",
            key="cleanup_interval",
        )
    return float(value)


class ExpiryJob:
    """Runs ``run_once`` every ``interval`` seconds (+-20%) until :meth:`stop`.

    Counters: ``runs`` (purges this process carried out), ``skipped`` (another process held
    the job), ``removed`` (entries deleted), ``failures``, ``last_run`` (Unix time).
    """

    def __init__(
        self, owner: Any, interval: float, run_once: Callable[[], Awaitable[int | None]]
    ) -> None:
        self.owner = owner
        self.interval = interval
        self._run_once = run_once
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.skipped = 0
        self.removed = 0
        self.failures = 0
        self.last_run: float | None = None

    def start(self) -> None:
        """Start the task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"leadperf-cache-expiry {self.owner!r}"
        )

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (an in-flight purge is abandoned)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _delay(self, first: bool) -> float:
        # The first run lands anywhere in the first interval, the rest one interval +-20%
        # apart: processes started together spread out instead of purging in step.
        low = 0.1 if first else 0.8
        return self.interval * random.uniform(low, 1.2)

    async def _loop(self) -> None:
        first = True
        while True:
            await asyncio.sleep(self._delay(first))
            first = False
            try:
                removed = await self._run_once()
            except Exception as exc:
                self.failures += 1
                _log.warning(
                    "%r: expiry job failed (%s: %s); next try in about %.0f s",
                    self.owner,
                    type(exc).__name__,
                    self.owner.count_failure(exc),
                    self.interval,
                )
                continue
            if removed is None:
                self.skipped += 1
            else:
                self.runs += 1
                self.removed += removed
                self.last_run = time.time()
