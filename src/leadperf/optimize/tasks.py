"""Background work: :class:`TaskOptimizer`, a bounded async priority queue.

>>> async with TaskOptimizer(workers=4, max_queued=1000) as tasks:   # doctest: +SKIP
...     handle = await tasks.submit(enrich_lead, lead_id, priority=HIGH)
...     value = await handle.result()

Priorities are integers, 0 the most urgent (``HIGH``), then ``NORMAL`` (1) and ``LOW``
(2). Workers pick between non-empty priorities by smooth weighted round robin (weights
4, 2, 1 by default), so urgent work goes first without starving the rest. A full queue
makes :meth:`TaskOptimizer.submit` wait (backpressure); :meth:`TaskOptimizer.submit_nowait`
raises :class:`TaskQueueFullError` instead. Failed attempts are retried under the same
:class:`~leadperf.RetryPolicy` the scraper uses.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import attrs

from .._core.lifecycle import AsyncResource, State
from .._core.stats import percentile
from .._core.validate import non_negative_int, positive_int
from ..errors import ClosedError, ConfigError, LeadperfError, TaskQueueFullError

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ..config import Settings
    from ..scraper import RetryPolicy

__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "TaskHandle",
    "TaskOptimizer",
    "TaskQueueFullError",
    "TaskStats",
]

log = logging.getLogger("leadperf.tasks")

HIGH = 0
NORMAL = 1
LOW = 2
_DEFAULT_WEIGHTS: Mapping[int, int] = {HIGH: 4, NORMAL: 2, LOW: 1}
_WAITS_KEPT = 2048
T = TypeVar("T")


@attrs.frozen
class TaskStats:
    """A snapshot of a TaskOptimizer. Wait times are queue waits, in milliseconds."""

    workers: int
    max_queued: int
    queued: int
    running: int
    done: int
    failed: int
    retried: int
    rejected: int
    cancelled: int
    wait_p50_ms: float
    wait_p95_ms: float
    queued_by_priority: dict[str, int]
    done_by_priority: dict[str, int]
    closed: bool


class _HandleState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskHandle(Generic[T]):
    """One submitted task: its state, attempts, and :meth:`result` to wait for it."""

    def __init__(self, name: str, priority: int) -> None:
        self.name = name
        self.priority = priority
        self.attempts = 0
        self.state = _HandleState.QUEUED
        self._event = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name!r} priority={self.priority} state={self.state.value}>"

    @property
    def done(self) -> bool:
        """True once the task succeeded, failed for good or was cancelled."""
        return self._event.is_set()

    async def result(self) -> T:
        """Wait for the task; return its value or raise its last error.

        Raises:
            ClosedError: the optimizer closed before the task ran.
        """
        await self._event.wait()
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value

    def _finish(self, state: _HandleState, value: Any = None, error: Any = None) -> None:
        self.state, self._value, self._error = state, value, error
        self._event.set()


@attrs.define
class _Item:
    handle: TaskHandle[Any]
    func: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    retry: RetryPolicy | None
    enqueued: float


def _default_retry() -> RetryPolicy:
    from ..scraper import RetryPolicy

    # Background work fails transiently on connections and timeouts of any library.
    return RetryPolicy(retry_on=frozenset({ConnectionError, TimeoutError}))


class TaskOptimizer(AsyncResource):
    """A bounded priority queue of async jobs run by ``workers`` tasks.

    Args:
        workers: concurrent jobs (default ``settings.tasks.workers``).
        max_queued: queued jobs before ``submit`` waits (default ``settings.tasks.max_queued``).
        retry: the RetryPolicy for failed attempts (default: three attempts on
            ``ConnectionError`` and ``TimeoutError``, exponential backoff with jitter);
            ``RetryPolicy(attempts=1)`` never retries.
        weights: share of picks per priority when several wait (default 4/2/1 for 0/1/2;
            other priorities weigh 1).

    Use ``async with TaskOptimizer() as tasks:``; leaving the block waits for queued work
    (or cancels it when the block raised). Raises :class:`ConfigError` for bad arguments.
    """

    def __init__(
        self,
        workers: int | None = None,
        max_queued: int | None = None,
        *,
        retry: RetryPolicy | None = None,
        weights: Mapping[int, int] | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.from_env()
        self.workers = positive_int(
            settings.tasks.workers if workers is None else workers, "workers"
        )
        self.max_queued = positive_int(
            settings.tasks.max_queued if max_queued is None else max_queued, "max_queued"
        )
        self._retry = retry
        self._weights = dict(_DEFAULT_WEIGHTS if weights is None else weights)
        for prio, weight in self._weights.items():
            _priority(prio)
            positive_int(weight, f"weights[{prio}]")
        self._queues: dict[int, deque[_Item]] = {}
        self._credit: dict[int, int] = {}
        self._queued = 0
        self._running = 0
        self._counts = dict.fromkeys(("done", "failed", "retried", "rejected", "cancelled"), 0)
        self._done_by: dict[int, int] = {}
        self._waits: deque[float] = deque(maxlen=_WAITS_KEPT)
        self._cond: anyio.Condition | None = None
        self._tg: TaskGroup | None = None
        self._closing = False
        self._seq = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._queued} queued, {self._running} running"
        return f"<TaskOptimizer workers={self.workers} max_queued={self.max_queued} {state}>"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the optimizer stopped accepting work."""
        return self._state is State.CLOSED or self._closing

    async def _aenter(self) -> None:
        if self._state is State.OPEN:
            raise LeadperfError("this TaskOptimizer is already open; enter it once")
        await self.open()

    async def _aexit(self, failed: bool) -> None:
        if failed and self._tg is not None:
            # The block failed: drop the queue and stop the workers without awaiting
            # anything here (this task sits inside the scope being cancelled).
            self._closing = True
            self._cancel_queued()
            self._tg.cancel_scope.cancel()
        await self.aclose()

    async def _aopen(self) -> None:
        self._cond = anyio.Condition()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        for i in range(self.workers):
            tg.start_soon(self._worker, name=f"leadperf-task-worker-{i}")

    async def _aclose(self) -> None:
        """Let the workers drain the queue (unless the block failed), then end them.

        The task group is left here, so close from the task that opened the optimizer.
        """
        tg, self._tg = self._tg, None
        if tg is None:
            return
        if not tg.cancel_scope.cancel_called:
            await self._stop(drain=True)
        try:
            # The block's own error propagates as it is, never wrapped in a group.
            await tg.__aexit__(None, None, None)
        finally:
            self._cancel_queued()

    async def _stop(self, *, drain: bool) -> None:
        assert self._cond is not None
        async with self._cond:
            self._closing = True
            if not drain:
                self._cancel_queued()
            self._cond.notify_all()

    def _cancel_queued(self) -> None:
        for queue in self._queues.values():
            while queue:
                item = queue.popleft()
                self._queued -= 1
                self._counts["cancelled"] += 1
                item.handle._finish(
                    _HandleState.CANCELLED,
                    error=ClosedError("the TaskOptimizer closed before this task ran"),
                )

    # -- submitting -----------------------------------------------------------------------

    def _item(
        self,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        priority: int,
        name: str | None,
        retry: RetryPolicy | None,
    ) -> _Item:
        if self._state is not State.OPEN or self._closing or self._cond is None:
            raise ClosedError("this TaskOptimizer is not open; use 'async with TaskOptimizer()'")
        if not callable(func):
            raise ConfigError(f"func must be an async callable, got {func!r}", key="func")
        self._seq += 1
        label = name or f"{getattr(func, '__name__', 'task')}-{self._seq}"
        handle: TaskHandle[Any] = TaskHandle(label, _priority(priority))
        return _Item(handle, func, args, retry, 0.0)

    def _enqueue(self, item: _Item) -> None:
        item.enqueued = time.monotonic()
        self._queues.setdefault(item.handle.priority, deque()).append(item)
        self._queued += 1

    async def submit(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        priority: int = NORMAL,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> TaskHandle[T]:
        """Queue ``await func(*args)``; waits while the queue is full (backpressure).

        Args:
            func: an async callable.
            priority: 0 (``HIGH``) is the most urgent; integers >= 0.
            name: a label for logs and the handle (default: the function's name).
            retry: this task's RetryPolicy (default: the optimizer's).

        Returns:
            A :class:`TaskHandle`; ``await handle.result()`` for the value.

        Raises:
            ClosedError: the optimizer is not open.
            ConfigError: bad priority or func.
        """
        item = self._item(func, args, priority, name, retry)
        assert self._cond is not None
        async with self._cond:
            while self._queued >= self.max_queued and not self._closing:
                await self._cond.wait()
            if self._closing:
                raise ClosedError("this TaskOptimizer closed while the task waited for room")
            self._enqueue(item)
            self._cond.notify_all()
        return item.handle

    def submit_nowait(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        priority: int = NORMAL,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> TaskHandle[T]:
        """Queue ``await func(*args)`` now, or refuse when the queue is full.

        Args:
            func: an async callable.
            priority: 0 (``HIGH``) is the most urgent; integers >= 0.
            name: a label for logs and the handle (default: the function's name).
            retry: this task's RetryPolicy (default: the optimizer's).

        Returns:
            A :class:`TaskHandle`; ``await handle.result()`` for the value.

        Raises:
            TaskQueueFullError: ``max_queued`` items are waiting already.
            ClosedError: the optimizer is not open.
            ConfigError: bad priority or func.
        """
        item = self._item(func, args, priority, name, retry)
        if self._queued >= self.max_queued:
            self._counts["rejected"] += 1
            raise TaskQueueFullError(
                f"the task queue is full ({self.max_queued} queued); use 'await submit()' to "
                "wait for room, or raise max_queued (settings.tasks.max_queued)"
            )
        self._enqueue(item)
        # Workers waiting on the condition are woken by the next notify; this nudges them
        # now without taking the lock (which a sync method cannot await).
        assert self._tg is not None
        self._tg.start_soon(self._notify)
        return item.handle

    async def _notify(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()

    async def join(self) -> None:
        """Wait until nothing is queued or running.

        Raises:
            ClosedError: the optimizer is not open.
        """
        assert self._cond is not None, "open the TaskOptimizer first"
        async with self._cond:
            while self._queued or self._running:
                await self._cond.wait()

    # -- running --------------------------------------------------------------------------

    def _weight(self, priority: int) -> int:
        return self._weights.get(priority, 1)

    def _pick(self) -> _Item:
        # Smooth weighted round robin (as nginx balances upstreams): over any window,
        # each waiting priority gets picks in proportion to its weight, interleaved.
        levels = [p for p, q in self._queues.items() if q]
        for p in list(self._credit):
            if p not in levels:
                self._credit[p] = 0
        total = sum(self._weight(p) for p in levels)
        for p in levels:
            self._credit[p] = self._credit.get(p, 0) + self._weight(p)
        best = max(levels, key=lambda p: (self._credit[p], -p))
        self._credit[best] -= total
        self._queued -= 1
        return self._queues[best].popleft()

    async def _worker(self) -> None:
        assert self._cond is not None
        while True:
            async with self._cond:
                while not self._queued and not self._closing:
                    await self._cond.wait()
                if not self._queued:
                    return
                item = self._pick()
                self._running += 1
                self._cond.notify_all()  # room for a waiting submit
            try:
                await self._run(item)
            finally:
                async with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    async def _run(self, item: _Item) -> None:
        handle = item.handle
        self._waits.append((time.monotonic() - item.enqueued) * 1000.0)
        handle.state = _HandleState.RUNNING
        policy = item.retry or self._retry or _default_retry()
        try:
            while True:
                handle.attempts += 1
                try:
                    value = await item.func(*item.args)
                except Exception as exc:
                    if handle.attempts < policy.attempts and policy.should_retry(exc):
                        self._counts["retried"] += 1
                        await anyio.sleep(policy.delay(handle.attempts))
                        continue
                    self._counts["failed"] += 1
                    log.warning(
                        "task %s failed after %d attempt(s): %s: %s",
                        handle.name,
                        handle.attempts,
                        type(exc).__name__,
                        exc,
                    )
                    handle._finish(_HandleState.FAILED, error=exc)
                    return
                self._counts["done"] += 1
                self._done_by[handle.priority] = self._done_by.get(handle.priority, 0) + 1
                handle._finish(_HandleState.DONE, value=value)
                return
        finally:
            if not handle.done:  # cancelled mid-run (the optimizer closed on an error)
                self._counts["cancelled"] += 1
                handle._finish(
                    _HandleState.CANCELLED, error=ClosedError("the TaskOptimizer was cancelled")
                )

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> TaskStats:
        """A frozen snapshot: queued, running, done, failed, retries and wait percentiles.

        Returns:
            A :class:`TaskStats` (wait percentiles in milliseconds, nearest rank).
        """
        waits = sorted(self._waits)
        return TaskStats(
            workers=self.workers,
            max_queued=self.max_queued,
            queued=self._queued,
            running=self._running,
            done=self._counts["done"],
            failed=self._counts["failed"],
            retried=self._counts["retried"],
            rejected=self._counts["rejected"],
            cancelled=self._counts["cancelled"],
            wait_p50_ms=round(percentile(waits, 0.50), 3),
            wait_p95_ms=round(percentile(waits, 0.95), 3),
            queued_by_priority={str(p): len(q) for p, q in sorted(self._queues.items())},
            done_by_priority={str(p): n for p, n in sorted(self._done_by.items())},
            closed=self.closed,
        )

    def apply_settings(self, settings: Settings) -> None:
        """Adopt ``settings.tasks.max_queued`` live; ``workers`` applies on reopen.

        Args:
            settings: the new settings (only ``settings.tasks`` is read).
        """
        self.max_queued = settings.tasks.max_queued


def _priority(value: Any) -> int:
    # 0 = HIGH, 1 = NORMAL, 2 = LOW; larger numbers are lower priorities still.
    return non_negative_int(value, "priority")
