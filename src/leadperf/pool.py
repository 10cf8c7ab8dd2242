"""ChromePool: a bounded set of real Chrome instances reused across tasks, one tab per task.

>>> with ChromePool(pool_size=2) as pool:               # doctest: +SKIP
...     with pool.session("task-1") as driver:
...         driver.get("https://example.com")

Instances start lazily up to ``pool_size``. Each task gets a fresh tab of an idle
instance: by default (``isolation="tab"``) in the instance's one off-the-record browser
context, whose cookies, storage and HTTP cache are cleared between tasks, or with
``isolation="context"`` in a fresh browser context of its own (see ``docs/pool.md`` for
what each isolates); the tab is closed on release and the next one is opened right away,
so ``acquire`` costs milliseconds. Idle instances are reaped after ``idle_timeout``;
instances are recycled after ``max_tasks_per_instance`` tasks or above ``max_memory_mb``
(PSS of the process tree); a dead or hung browser is killed and replaced, and the task
holding it gets :class:`~leadperf.errors.BrowserCrashedError`. ``close()`` leaves no
chromedriver or Chrome process or temp dir behind; an ``atexit`` guard closes pools the
host forgot, SIGTERM and SIGHUP close every pool before the host's own handler runs, and on
Linux browsers die with the host however it ends, SIGKILL included (``_chrome/hostdeath``).

The pool owns lending (which instance is busy, for whom, how many tasks it served, when
it was last used); the instances, their processes and isolation live in ``_chrome/``.
The lifecycle is the shared :class:`~leadperf._core.lifecycle.SyncResource` one: a pool
is open from construction, ``close()`` is sync and idempotent, ``aclose()`` runs it in a
worker thread. ``trim()`` closes idle instances on demand (the memory guard's lever).

Slightly over 600 lines: lending, release, close and housekeeping share one lock and one
set of slots, and split across modules they would reach into each other's state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import attrs

from ._chrome.config import resolve
from ._chrome.devtools import InstanceBroken
from ._chrome.hostdeath import forget, guard_until_closed
from ._chrome.instance import ChromeInstance
from ._chrome.limiters import LoopLimiters
from ._chrome.options import DEFAULT_ISOLATION
from ._chrome.stats import InstanceStats, PoolStats, instance_stats
from ._core.lifecycle import State, SyncResource
from ._core.stats import percentile
from ._core.validate import non_negative_int
from ._util import mask_url
from .config import Settings
from .errors import (
    BrowserCrashedError,
    ClosedError,
    LeadperfError,
    PoolError,
    PoolExhaustedError,
)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

_log = logging.getLogger("leadperf.pool")

__all__ = ["ChromePool", "InstanceStats", "PoolStats", "get_chrome_pool", "screenshot"]

# The snapshot classes are defined with the instance code; their public home is here.
InstanceStats.__module__ = PoolStats.__module__ = __name__

_LATENCY_WINDOW = 1000  # acquire latencies kept for the percentiles
_MEMORY_SAMPLE_INTERVAL = 10.0  # seconds between memory samples of one instance
_FRESH_S = 1.0  # an instance reset this recently is lent without a browser round trip


@attrs.define(eq=False)
class _Slot:
    """The pool's record of one instance: the lending state is the pool's alone."""

    instance: ChromeInstance
    busy: bool = False
    tasks: int = 0
    last_used: float = attrs.field(factory=time.monotonic)


@attrs.define
class _Lease:
    slot: _Slot
    acquired_at: float

    @property
    def instance(self) -> ChromeInstance:
        return self.slot.instance


class ChromePool(SyncResource):
    """A bounded pool of Chrome instances; lend one tab per task with :meth:`session`.

    Arguments left as ``None`` come from ``settings.chrome`` (env ``CHROME_POOL_SIZE``,
    ``CHROME_IDLE_TIMEOUT``): ``pool_size`` instances at most, ``idle_timeout`` seconds
    before an idle instance is closed, ``headless``. ``max_tasks_per_instance`` tasks and
    ``max_memory_mb`` MB of PSS (None: no ceiling) trigger a recycle. ``chrome_binary`` and
    ``driver_path`` default to ``chromium``/``google-chrome`` and ``chromedriver`` on PATH;
    ``remote_url`` uses a Selenium Grid instead of local processes. ``options`` is a
    ``ChromeOptions`` or a list of extra Chrome arguments to start from.
    ``op_timeout`` bounds the pool's own browser calls (health check, tab reset): past it
    the browser counts as hung. ``isolation`` is ``"tab"`` (default: a fresh tab in the
    instance's one off-the-record context, whose cookies, storage and HTTP cache are
    cleared between tasks, with one renderer process for the instance) or ``"context"`` (a
    fresh browser context per task: isolates more, costs 1.7x-2x the CPU per task; see
    ``docs/pool.md``). Raises :class:`ConfigError` for bad arguments.
    """

    def __init__(
        self,
        pool_size: int | None = None,
        headless: bool | None = None,
        idle_timeout: float | None = None,
        max_tasks_per_instance: int | None = 100,
        max_memory_mb: float | None = 1024.0,
        chrome_binary: str | None = None,
        driver_path: str | None = None,
        remote_url: str | None = None,
        options: Any = None,
        settings: Settings | None = None,
        *,
        start_timeout: float = 60.0,
        op_timeout: float = 15.0,
        isolation: str = DEFAULT_ISOLATION,
    ) -> None:
        settings = settings or Settings.from_env()
        self._settings = settings
        config = resolve(
            settings,
            pool_size=pool_size,
            headless=headless,
            idle_timeout=idle_timeout,
            max_tasks_per_instance=max_tasks_per_instance,
            max_memory_mb=max_memory_mb,
            chrome_binary=chrome_binary,
            driver_path=driver_path,
            remote_url=remote_url,
            options=options,
            start_timeout=start_timeout,
            op_timeout=op_timeout,
            isolation=isolation,
        )
        self._config = config
        self.pool_size = config.pool_size
        self.idle_timeout = config.idle_timeout
        self.headless = config.headless
        self.max_tasks_per_instance = config.max_tasks_per_instance
        self.max_memory_mb = config.max_memory_mb
        self.start_timeout = config.start_timeout
        self.op_timeout = config.op_timeout
        self.isolation = config.isolation
        self._options = config.options
        self.remote_url = config.remote_url
        self.chrome_binary = config.chrome_binary
        self.driver_path = config.driver_path
        self._init_state()

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._instances: list[_Slot] = []
        self._idle: list[_Slot] = []  # a stack: the warmest instance is lent first
        self._leases: dict[Any, _Lease] = {}
        self._starting = 0
        self._waiting = 0
        self._numbers = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._created = self._recycled = self._reaped = self._crashed = 0
        self._tasks = self._waits = self._timeouts = 0
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self._limiters = LoopLimiters(self.pool_size)
        self._mark_open()  # ready at construction: browsers start on first acquire
        guard_until_closed(self)

    def __repr__(self) -> str:
        where = f"remote_url={mask_url(self.remote_url)!r}" if self.remote_url else "local"
        state = "closed" if self._is_closed() else f"{len(self._instances)}/{self.pool_size}"
        return f"<ChromePool {where} instances={state}>"

    # -- lending ----------------------------------------------------------------------------

    def acquire(self, task_id: Any, timeout: float = 30.0) -> WebDriver:
        """Lend ``task_id`` a driver whose current window is a fresh blank tab.

        Waits up to ``timeout`` seconds for a free instance, then raises
        :class:`PoolExhaustedError`. Pair with :meth:`release` (or use :meth:`session`).
        Raises :class:`BrowserStartError` when a new instance cannot start, ClosedError
        after close, PoolError if ``task_id`` already holds a driver.
        """
        started = time.monotonic()
        deadline = started + max(0.0, timeout)
        while True:
            slot = self._checkout(task_id, deadline, timeout)
            if slot is None:
                slot = self._start_instance()
            else:
                try:
                    slot.instance.check(fresh_for=_FRESH_S)
                except InstanceBroken:
                    self._discard(slot, crashed=True)
                    continue
            with self._cond:
                problem: Exception
                if self._is_closed():
                    problem = ClosedError(
                        "this ChromePool was closed while acquiring; create a new one"
                    )
                elif task_id in self._leases:
                    problem = PoolError(
                        f"task {task_id!r} already holds a driver; release it first"
                    )
                else:
                    self._leases[task_id] = _Lease(slot, time.monotonic())
                    self._latencies.append((time.monotonic() - started) * 1000.0)
                    return slot.instance.driver
                if not self._is_closed():
                    slot.busy = False
                    self._idle.append(slot)
                    self._cond.notify()
            if self._is_closed():
                slot.instance.close()
            raise problem

    def release(self, task_id: Any, driver: WebDriver) -> None:
        """Give ``task_id``'s driver back: its tab is closed and the instance made ready.

        Raises :class:`BrowserCrashedError` if the browser died or hung while lent (it is
        replaced) and PoolError for an unknown ``task_id`` or a driver the task does not
        hold. After :meth:`close`, releasing is a no-op.
        """
        self._give_back(task_id, driver)

    def _give_back(self, task_id: Any, driver: WebDriver) -> bool:
        """:meth:`release`; False when the pool was closed while the task held the driver."""
        with self._cond:
            if self._is_closed():
                return self._leases.pop(task_id, None) is None
            lease = self._leases.get(task_id)
            if lease is None:
                raise PoolError(f"task {task_id!r} holds no driver from this pool")
            if lease.instance.driver is not driver:
                raise PoolError(f"task {task_id!r} holds a different driver")
            del self._leases[task_id]
            self._tasks += 1
        slot = lease.slot
        slot.tasks += 1
        instance = slot.instance
        try:
            if not instance.processes_alive():
                raise InstanceBroken("the browser or chromedriver process died")
            if self._needs_recycle(slot):
                self._discard(slot, recycled=True)
                return True
            instance.prepare_tab()
        except InstanceBroken as exc:
            if self._is_closed():
                return False  # close() killed it under the task
            self._discard(slot, crashed=True)
            raise BrowserCrashedError(
                f"the browser serving task {task_id!r} crashed or hung ({exc}); it was killed "
                "and will be replaced. Retry the task"
            ) from exc
        with self._cond:
            if self._is_closed():
                closed_now = True
            else:
                closed_now = False
                slot.busy = False
                slot.last_used = time.monotonic()
                self._idle.append(slot)
                self._cond.notify()
        if closed_now:
            instance.close()
        return True

    @contextlib.contextmanager
    def session(self, task_id: Any, timeout: float = 30.0) -> Iterator[WebDriver]:
        """``with pool.session(task_id) as driver:`` acquire, then release on exit.

        If the browser crashed while lent, the block's error (or a clean exit) becomes
        :class:`BrowserCrashedError`, chained to the original. If the pool was closed while
        the block ran, the block's exit (or its driver error) becomes :class:`ClosedError`:
        its browser was stopped under it, so its work may be incomplete.
        """
        driver = self.acquire(task_id, timeout)
        try:
            yield driver
        except BaseException as exc:
            self._release_after_error(task_id, driver, exc)
            raise
        self._release_after_block(task_id, driver)

    @contextlib.asynccontextmanager
    async def session_async(self, task_id: Any, timeout: float = 30.0) -> AsyncIterator[WebDriver]:
        """Async twin of :meth:`session`; Selenium calls run in worker threads, not the loop.

        Run your own driver calls in threads too (``await anyio.to_thread.run_sync(driver.get,
        url)``). Waiting for a free instance counts against ``timeout``; a cancellation that
        arrives while a worker thread is already lending an instance takes effect once it
        returns, and the instance is then released.
        """
        gate, threads = self._limiters.get()
        started = anyio.current_time()
        got_gate = False
        with anyio.move_on_after(max(0.0, timeout)):
            await gate.acquire()
            got_gate = True
        if not got_gate:
            self._check_open()
            with self._cond:
                self._waits += 1
                self._timeouts += 1
            raise PoolExhaustedError(
                f"no Chrome instance free within {timeout:g}s (pool_size={self.pool_size}); "
                "raise the timeout or pool_size"
            )
        try:
            remaining = max(0.0, timeout - (anyio.current_time() - started))
            driver = await anyio.to_thread.run_sync(
                functools.partial(self.acquire, task_id, remaining), limiter=threads
            )
        finally:
            gate.release()
        try:
            yield driver
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    self._release_after_error, task_id, driver, exc, limiter=threads
                )
            raise
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                self._release_after_block, task_id, driver, limiter=threads
            )

    def screenshot(
        self, driver: WebDriver, target_size_kb: int | None = None, format: str = "JPEG"
    ) -> bytes:
        """The driver's current viewport as a small image (``target_size_kb`` from settings)."""
        size = self._settings.resources.screenshot_target_size_kb
        return screenshot(driver, size if target_size_kb is None else target_size_kb, format)

    # -- stats and lifecycle ----------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A frozen snapshot of sizes, counters, acquire latency and memory per instance."""
        now = time.monotonic()
        with self._cond:
            latencies = sorted(self._latencies)
            instances = tuple(
                instance_stats(slot.instance, slot.busy, slot.tasks, slot.last_used, now)
                for slot in self._instances
            )
            in_use = sum(1 for slot in self._instances if slot.busy)
            return PoolStats(
                max_size=self.pool_size,
                size=len(self._instances),
                in_use=in_use,
                idle=len(self._idle),
                starting=self._starting,
                waiting=self._waiting,
                created=self._created,
                recycled=self._recycled,
                reaped=self._reaped,
                crashed=self._crashed,
                tasks=self._tasks,
                waits=self._waits,
                timeouts=self._timeouts,
                acquire_p50_ms=percentile(latencies, 0.50),
                acquire_p95_ms=percentile(latencies, 0.95),
                utilization=in_use / self.pool_size,
                memory_mb=tuple(i.pss_mb for i in instances),
                instances=instances,
                closed=self._is_closed(),
            )

    def trim(self, keep: int | None = None) -> int:
        """Close idle instances until at most ``keep`` run; an instance lent to a task is
        never closed. The memory guard calls this after ``memory_focused`` lowered
        ``pool_size``; tasks arriving later start instances again up to ``pool_size``.

        Args:
            keep: how many instances may keep running, busy ones counted first (default:
                the current ``pool_size``). Least recently used idle instances go first.

        Returns:
            How many instances were closed (counted in ``stats().reaped``); 0 on a closed
            pool, whose instances are already gone.

        Raises:
            ConfigError: ``keep`` is not an integer >= 0.
        """
        keep = self.pool_size if keep is None else non_negative_int(keep, "keep")
        with self._cond:
            if self._is_closed():
                return 0
            excess = max(0, len(self._instances) - keep)
            # The idle list is a stack (warmest last): the coldest are at its bottom.
            victims = self._idle[: min(excess, len(self._idle))]
            for slot in victims:
                self._idle.remove(slot)
                self._instances.remove(slot)
            self._reaped += len(victims)
            if victims:
                self._cond.notify_all()  # room to start instances again, if pool_size allows
        for slot in victims:
            slot.instance.close()
        if victims:
            _log.info("trimmed %d idle Chrome instance(s) down to %d", len(victims), keep)
        return len(victims)

    def close(self) -> None:
        """Quit every instance and kill any process the pool started. Idempotent."""
        super().close()

    def _close(self) -> None:
        # The state is CLOSED before the lock is taken: a lend, release or start that saw
        # the pool open under the lock has finished, so every instance is in the snapshot.
        # Safe to run twice (two threads closing at once): the second finds nothing.
        with self._cond:
            slots = list(self._instances)
            self._instances.clear()
            self._idle.clear()
            self._cond.notify_all()
        self._stop.set()
        reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()
        for slot in slots:
            slot.instance.close()
        forget(self)

    def _kill_now(self) -> None:
        """Close from a signal handler: no locks (the interrupted code may hold them).

        The pool is then closed; a later :meth:`close` has nothing left to do.
        """
        self._state = State.CLOSED
        self._stop.set()
        for slot in list(self._instances):
            slot.instance.kill_now()
        forget(self)

    async def aclose(self) -> None:
        """Async :meth:`close` (the blocking teardown runs in a worker thread)."""
        await anyio.to_thread.run_sync(self.close)

    # -- internals --------------------------------------------------------------------------

    def _checkout(self, task_id: Any, deadline: float, timeout: float) -> _Slot | None:
        """Take an idle instance, or a start slot (None), waiting until ``deadline``."""
        waited = False
        with self._cond:
            while True:
                self._check_open()
                if task_id in self._leases:
                    raise PoolError(f"task {task_id!r} already holds a driver; release it first")
                if self._idle:
                    slot = self._idle.pop()
                    slot.busy = True
                    return slot
                if len(self._instances) + self._starting < self.pool_size:
                    self._starting += 1
                    return None
                if not waited:
                    waited = True
                    self._waits += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._timeouts += 1
                    raise PoolExhaustedError(
                        f"all {self.pool_size} Chrome instances stayed busy for {timeout:g}s; "
                        "raise the timeout or pool_size, or release drivers sooner"
                    )
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1

    def _start_instance(self) -> _Slot:
        with self._cond:
            self._numbers += 1
            number = self._numbers
        try:
            instance = ChromeInstance.start(self._config, number)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        slot = _Slot(instance, busy=True)
        instance.sample_memory()
        with self._cond:
            self._starting -= 1
            closed = self._is_closed()
            if not closed:
                self._instances.append(slot)
                self._created += 1
                self._ensure_reaper()
        if closed:
            instance.close()
            raise ClosedError("this ChromePool was closed while starting Chrome; create a new one")
        return slot

    def _needs_recycle(self, slot: _Slot) -> bool:
        if self.max_tasks_per_instance is not None and slot.tasks >= self.max_tasks_per_instance:
            return True
        pss = slot.instance.pss_mb
        if self.max_memory_mb is None or pss is None:
            return False
        # Sampled by the housekeeping thread, off the task's path.
        return pss > self.max_memory_mb

    def _discard(self, slot: _Slot, *, crashed: bool = False, recycled: bool = False) -> None:
        """Forget ``slot``'s instance (freeing room for a replacement) and kill it."""
        instance = slot.instance
        if crashed:
            _log.warning(
                "Chrome instance (browser pid %s) crashed or hung: killed; a new one "
                "replaces it on demand",
                instance.browser_pid,
            )
        elif recycled:
            _log.info("Chrome instance (browser pid %s) recycled", instance.browser_pid)
        with self._cond:
            if slot in self._instances:
                self._instances.remove(slot)
            if slot in self._idle:
                self._idle.remove(slot)
            self._crashed += crashed
            self._recycled += recycled
            self._cond.notify()
        instance.close()

    def _release_after_block(self, task_id: Any, driver: WebDriver) -> None:
        if not self._give_back(task_id, driver):
            raise _closed_under(task_id)

    def _release_after_error(self, task_id: Any, driver: WebDriver, error: BaseException) -> None:
        try:
            returned = self._give_back(task_id, driver)
        except BrowserCrashedError as crash:
            if isinstance(error, Exception) and not isinstance(error, BrowserCrashedError):
                raise crash from error
            return  # Cancellation and interrupts keep their meaning; the instance is gone.
        if not returned and isinstance(error, Exception) and not isinstance(error, LeadperfError):
            # The driver call failed because close() stopped the browser under the task.
            raise _closed_under(task_id) from error

    def _ensure_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(
                target=self._reap_loop, name="leadperf-chrome-housekeeping", daemon=True
            )
            self._reaper.start()

    def _reap_loop(self) -> None:
        # Housekeeping: close instances idle past idle_timeout, sample memory now and then.
        interval = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            now = time.monotonic()
            cutoff = now - self.idle_timeout
            with self._cond:
                stale = [slot for slot in self._idle if slot.last_used <= cutoff]
                for slot in stale:
                    self._idle.remove(slot)
                    self._instances.remove(slot)
                self._reaped += len(stale)
                if stale:
                    self._cond.notify_all()
                due = [
                    slot.instance
                    for slot in self._instances
                    if now - slot.instance.memory_sampled_at >= _MEMORY_SAMPLE_INTERVAL
                ]
            for slot in stale:
                slot.instance.close()
            for inst in due:
                if self._stop.is_set():
                    break
                inst.sample_memory()


def screenshot(driver: WebDriver, target_size_kb: int = 200, format: str = "JPEG") -> bytes:
    """Screenshot the driver's viewport and shrink it under ``target_size_kb`` KB.

    Uses ``ResourceOptimizer.optimize_screenshot`` (Pillow; ``pip install
    'leadperf[images]'``). Raises :class:`~leadperf.errors.ImageError` if it cannot.
    """
    from .optimize.resources import get_resource_optimizer

    png = driver.get_screenshot_as_png()
    return get_resource_optimizer().optimize_screenshot(
        png, target_size_kb=target_size_kb, format=format
    )


def get_chrome_pool() -> ChromePool:
    """The process-wide default pool, built from the environment on first use.

    A closed default is replaced by a new one on the next call.
    """
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool.closed:
            _default_pool = ChromePool()
        return _default_pool


_default_lock = threading.Lock()
_default_pool: ChromePool | None = None


def _closed_under(task_id: Any) -> ClosedError:
    return ClosedError(
        f"this ChromePool was closed while task {task_id!r} held a driver; its browser was "
        "stopped, so the task's work may be incomplete"
    )
