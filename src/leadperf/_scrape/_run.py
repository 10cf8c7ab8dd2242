"""Streams any number of URLs through a bounded set of workers, per-platform fair.

A run reads its input lazily, at most ``lookahead`` URLs ahead of the results, into one
FIFO queue per platform. Workers (at most ``max_connections`` of them) take a job only
together with a slot of its platform, round-robin over platforms with queued work, so a
slow or throttled platform never holds the others back. A worker that finishes a job
keeps its slot for the next job of the same platform when nobody else is waiting for it
(the fast path: no wake-ups, no queue churn).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import anyio

from ._platform import Platform

__all__ = ["Job", "Run"]

R = TypeVar("R")

_NONE, _CANDIDATE, _WAITING = 0, 1, 2


class Job(Generic[R]):
    """One input: its position, its URL and its platform (None when already decided)."""

    __slots__ = ("index", "platform", "result", "url")

    def __init__(self, index: int, url: Any, platform: Platform | None, result: R | None) -> None:
        self.index = index
        self.url = url
        self.platform = platform
        self.result = result


class Run(Generic[R]):
    """One batch's dispatcher; ``await run.execute()`` returns when every input is emitted.

    ``read()`` yields ready :class:`Job` objects (``platform=None`` with a ``result`` for
    inputs rejected up front); ``handle(job)`` produces the result while the job's slot
    is held; ``emit(job, result)`` delivers it, returning an awaitable only when it has to
    wait (a plain call otherwise: no coroutine per result). ``emit_decided``, when given,
    delivers the results decided up front instead.
    """

    def __init__(
        self,
        jobs: Iterator[Job[R]],
        *,
        handle: Callable[[Job[R]], Awaitable[R]],
        emit: Callable[[Job[R], R], Awaitable[None] | None],
        lookahead: int,
        workers: int,
        emit_decided: Callable[[Job[R], R], Awaitable[None] | None] | None = None,
    ) -> None:
        self._jobs = jobs
        self._handle = handle
        self._emit = emit
        self._emit_decided = emit if emit_decided is None else emit_decided
        self._lookahead = lookahead
        self._workers = workers
        self._queues: dict[Platform, deque[Job[R]]] = {}
        self._state: dict[Platform, int] = {}
        self._candidates: deque[Platform] = deque()
        self._granted: deque[Job[R]] = deque()
        self._decided: deque[Job[R]] = deque()
        self._parked: deque[anyio.Event] = deque()
        self._buffered = 0
        self._exhausted = False
        self._closed = False

    async def execute(self) -> None:
        """Run the workers to completion (or until cancelled), then give back every slot."""
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._workers):
                    tg.start_soon(self._worker)
        finally:
            self._close()

    # -- input ----------------------------------------------------------------------------

    def _refill(self) -> None:
        jobs = self._jobs
        while not self._exhausted and self._buffered < self._lookahead:
            try:
                job = next(jobs)
            except StopIteration:
                self._exhausted = True
                if self._buffered == 0:
                    self._wake_all()
                return
            self._buffered += 1
            platform = job.platform
            if platform is None:
                self._decided.append(job)
                self._wake_one()
                continue
            queue = self._queues.get(platform)
            if queue is None:
                queue = self._queues[platform] = deque()
            queue.append(job)
            if self._state.get(platform, _NONE) == _NONE:
                self._state[platform] = _CANDIDATE
                self._candidates.append(platform)
                self._wake_one()

    # -- taking work ----------------------------------------------------------------------

    def _take(self) -> Job[R] | None:
        """A job with its platform slot already held, or None when nothing can start now."""
        self._refill()
        if self._decided:
            return self._decided.popleft()
        if self._granted:
            return self._granted.popleft()
        candidates = self._candidates
        while candidates:
            platform = candidates.popleft()
            queue = self._queues[platform]
            if not queue:
                self._state[platform] = _NONE
                continue
            if platform.try_acquire():
                job = queue.popleft()
                if queue:
                    candidates.append(platform)
                else:
                    self._state[platform] = _NONE
                return job
            self._state[platform] = _WAITING
            platform.add_waiter(self, self._granter(platform))
        return None

    def _granter(self, platform: Platform) -> Callable[[], bool]:
        def grant() -> bool:
            queue = self._queues.get(platform)
            if self._closed or not queue:
                self._state[platform] = _NONE
                return False
            self._granted.append(queue.popleft())
            if queue:
                self._state[platform] = _CANDIDATE
                self._candidates.append(platform)
            else:
                self._state[platform] = _NONE
            self._wake_one()
            return True

        return grant

    def _keep(self, platform: Platform) -> Job[R] | None:
        """The next job of ``platform`` when the worker may keep the slot it holds."""
        self._refill()
        queue = self._queues.get(platform)
        if queue and platform.may_keep(self):
            return queue.popleft()
        return None

    async def _next(self) -> Job[R] | None:
        while True:
            job = self._take()
            if job is not None:
                return job
            if self._exhausted and self._buffered == 0:
                return None
            event = anyio.Event()
            self._parked.append(event)
            await event.wait()

    def _wake_one(self) -> None:
        if self._parked:
            self._parked.popleft().set()

    def _wake_all(self) -> None:
        while self._parked:
            self._parked.popleft().set()

    # -- workers --------------------------------------------------------------------------

    async def _worker(self) -> None:
        job: Job[R] | None = None
        while True:
            if job is None:
                job = await self._next()
                if job is None:
                    return
            platform = job.platform
            if platform is None:
                assert job.result is not None
                waiter = self._emit_decided(job, job.result)
                if waiter is not None:
                    await waiter
                self._done()
                job = None
                continue
            try:
                try:
                    result = await self._handle(job)
                finally:
                    platform.pending -= 1
                waiter = self._emit(job, result)
                if waiter is not None:
                    await waiter
            except BaseException:
                platform.release()
                raise
            self._done()
            job = self._keep(platform)
            if job is None:
                platform.release()

    def _done(self) -> None:
        self._buffered -= 1
        if self._exhausted and self._buffered == 0:
            self._wake_all()

    def _close(self) -> None:
        """Give back slots granted but never used and stop waiting on every platform."""
        self._closed = True
        while self._granted:
            job = self._granted.popleft()
            assert job.platform is not None
            job.platform.pending -= 1
            job.platform.release()
        for queue in self._queues.values():
            for job in queue:
                assert job.platform is not None
                job.platform.pending -= 1
            queue.clear()
        for platform, state in self._state.items():
            if state == _WAITING:
                platform.remove_waiters(self)
        self._wake_all()
