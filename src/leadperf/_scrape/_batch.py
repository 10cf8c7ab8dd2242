"""Batches: ``scrape_batch`` (every result, in order), ``scrape_iter`` (as they complete).

Both stream the input through :class:`Run`. A batch's repeated URLs are fetched once:
``scrape_batch`` gives each repeat the first one's result, ``scrape_iter`` (which keeps
no memory of finished URLs) shares identical requests that are in flight together. With
a shared ``dedup=`` set the input is checked in chunks, one ``add_many`` round trip per
chunk, and URLs another worker already took get a ``duplicate=True`` result.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sized
from itertools import islice
from typing import TYPE_CHECKING, TypeAlias

import anyio
import attrs

from .._core.validate import non_negative_number, positive_int
from .._util import require
from ..errors import ClosedError, ConfigError, LeadperfError
from ._pipeline import ScrapeFunc
from ._results import ScrapeResult
from ._run import Job, Run

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._platform import Platform
    from ._results import Counters
    from ._shared import SharedDedup

__all__ = ["Batches", "Progress"]

_log = logging.getLogger("leadperf.scraper")

Progress: TypeAlias = bool | Callable[[int, int | None], object] | None
Emit: TypeAlias = Callable[[Job[ScrapeResult], ScrapeResult], Awaitable[None] | None]
#: URLs sent to a shared dedup set in one round trip.
DEDUP_CHUNK = 5_000


def _check_scrape_func(scrape_func: object) -> None:
    if scrape_func is not None and (
        not callable(scrape_func)
        or (inspect.isfunction(scrape_func) and not inspect.iscoroutinefunction(scrape_func))
    ):
        raise ConfigError(
            f"scrape_func: must be an async function (client, url) -> value, got {scrape_func!r}",
            key="scrape_func",
        )


class Batches:
    """``scrape_batch``/``scrape_iter`` and their plumbing, mixed into :class:`AsyncScraper`."""

    max_connections: int
    _tg: TaskGroup | None
    _iterations: set[anyio.CancelScope]
    _dedup: SharedDedup | None
    _counters: Counters

    if TYPE_CHECKING:

        def _job(self, index: int, url: object) -> Job[ScrapeResult]: ...
        def _finish(self, result: ScrapeResult) -> ScrapeResult: ...
        @property
        def closed(self) -> bool: ...
        def _check_open(self) -> None: ...
        def _ensure_open(self) -> None: ...
        def _count_error(self, kind: str) -> None: ...
        async def _process(
            self, url: str, platform: Platform, scrape_func: ScrapeFunc | None, delay: float
        ) -> ScrapeResult: ...
        async def _get(self, url: str, platform: Platform, delay: float) -> ScrapeResult: ...

    def _prepare(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None,
        delay_seconds: float,
        batch_size: int | None,
        progress: Progress,
    ) -> tuple[int | None, int, int, float]:
        if isinstance(urls, str | bytes) or not isinstance(urls, Iterable):
            raise ConfigError(
                f"urls: must be an iterable of URL strings, got {type(urls).__name__}", key="urls"
            )
        _check_scrape_func(scrape_func)
        delay = non_negative_number(delay_seconds, "delay_seconds", finite=False)
        lookahead = (
            max(1_000, 10 * self.max_connections)
            if batch_size is None
            else positive_int(batch_size, "batch_size")
        )
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ConfigError(
                "progress: must be True, False, None or a callable (done, total), "
                f"got {progress!r}",
                key="progress",
            )
        total = len(urls) if isinstance(urls, Sized) else None
        workers = min(self.max_connections, lookahead)
        if total is not None:
            workers = max(1, min(workers, total))
        return total, lookahead, workers, delay

    async def _execute(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None,
        delay: float,
        emit: Emit,
        lookahead: int,
        workers: int,
        repeats: list[tuple[int, int]] | None,
    ) -> None:
        """Run every URL; ``repeats`` collects ``(index, first index)`` of repeated URLs."""
        if self._dedup is None:
            jobs = self._jobs(enumerate(urls), repeats)
            await self._run(jobs, scrape_func, delay, emit, lookahead, workers).execute()
            return
        numbered = enumerate(urls)
        while chunk := list(islice(numbered, DEDUP_CHUNK)):
            fresh = await self._claim([u for _, u in chunk])
            jobs = self._jobs(iter(chunk), repeats, fresh)
            await self._run(jobs, scrape_func, delay, emit, lookahead, workers).execute()

    async def _claim(self, urls: list[str]) -> list[bool]:
        """``add_many`` on the shared set; when it fails, every URL is fetched (fail open)."""
        assert self._dedup is not None
        try:
            flags = list(await self._dedup.add_many([str(u) for u in urls]))
        except Exception as exc:  # a dedup outage must not lose the batch
            self._count_error("DedupError")
            _log.warning("shared dedup failed (%s): fetching the chunk anyway", type(exc).__name__)
            return [True] * len(urls)
        if len(flags) != len(urls):
            raise LeadperfError(
                f"dedup.add_many returned {len(flags)} flags for {len(urls)} URLs; it must "
                "return one per URL"
            )
        return flags

    def _jobs(
        self,
        numbered: Iterator[tuple[int, str]],
        repeats: list[tuple[int, int]] | None,
        fresh: list[bool] | None = None,
    ) -> Iterator[Job[ScrapeResult]]:
        seen: dict[str, int] = {}  # one entry per distinct URL: only when results are kept
        for position, (index, url) in enumerate(numbered):
            if fresh is not None and not fresh[position]:
                self._counters.deduplicated += 1
                yield Job(index, url, None, ScrapeResult(url=str(url), duplicate=True))
                continue
            if repeats is not None and type(url) is str:
                first = seen.setdefault(url, index)
                if first != index:
                    repeats.append((index, first))  # given the first's result after the run
                    continue
            yield self._job(index, url)

    async def scrape_batch(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> list[ScrapeResult]:
        """Fetch every URL; return one :class:`ScrapeResult` per input, in input order.

        ``scrape_func(client, url)``, when given, runs instead of a plain GET, under the
        same limits and retries; its return value lands in ``result.value``.
        ``delay_seconds`` spaces requests to one platform. ``batch_size`` bounds how many
        URLs are read ahead of their results (default ``max(1000, 10 * max_connections)``;
        raise it when the input is sorted by platform). ``progress=True`` shows a tqdm bar
        (``pip install 'leadperf[progress]'``); a callable gets ``(done, total)``.
        A URL repeated in the batch is fetched once (without ``scrape_func``); each repeat
        gets the same result. Bad arguments raise :class:`ConfigError`; failed URLs never
        raise.
        """
        self._ensure_open()
        total, lookahead, workers, delay = self._prepare(
            urls, scrape_func, delay_seconds, batch_size, progress
        )
        results: list[ScrapeResult | None] = []
        tick = _progress(progress, total)

        def emit(job: Job[ScrapeResult], result: ScrapeResult) -> None:
            index = job.index
            if index >= len(results):
                results.extend([None] * (index + 1 - len(results)))
            results[index] = result
            if tick is not None:
                tick(1)

        repeats: list[tuple[int, int]] | None = [] if scrape_func is None else None
        try:
            await self._execute(urls, scrape_func, delay, emit, lookahead, workers, repeats)
            counters = self._counters
            for index, first in repeats or ():
                if index >= len(results):
                    results.extend([None] * (index + 1 - len(results)))
                shared = results[first]
                assert shared is not None
                results[index] = attrs.evolve(shared, attempts=0, from_cache=True)
                counters.deduplicated += 1
                counters.results += 1
                if tick is not None:
                    tick(1)
        finally:
            if tick is not None:
                tick(0)
        missing = [i for i, r in enumerate(results) if r is None]
        assert not missing, f"results lost for inputs {missing[:10]}"
        return results  # type: ignore[return-value]  # no None left, checked above

    def scrape_iter(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None = None,
        delay_seconds: float = 0.0,
        batch_size: int | None = None,
        progress: Progress = None,
    ) -> AsyncIterator[ScrapeResult]:
        """Like :meth:`scrape_batch`, but yield results as they complete (any order).

        Memory stays bounded by ``batch_size`` whatever the number of URLs, so repeated
        URLs are shared only while identical requests are in flight together. Needs the
        scraper entered with ``async with``; leaving the loop early stops the work.
        """
        self._check_open()
        if self._tg is None:
            raise LeadperfError(
                "scrape_iter() needs the scraper entered: 'async with AsyncScraper() as s:'"
            )
        self._ensure_open()
        total, lookahead, workers, delay = self._prepare(
            urls, scrape_func, delay_seconds, batch_size, progress
        )
        return self._iterate(urls, scrape_func, delay, lookahead, workers, total, progress)

    async def _iterate(
        self,
        urls: Iterable[str],
        scrape_func: ScrapeFunc | None,
        delay: float,
        lookahead: int,
        workers: int,
        total: int | None,
        progress: Progress,
    ) -> AsyncIterator[ScrapeResult]:
        # One function on purpose: the producer task, its callbacks and the consumer loop
        # share the stream, the cancel scope and the progress display.
        assert self._tg is not None
        send, receive = anyio.create_memory_object_stream[ScrapeResult](workers)
        scope = anyio.CancelScope()
        tick = _progress(progress, total)

        def emit(job: Job[ScrapeResult], result: ScrapeResult) -> Awaitable[None] | None:
            try:
                # No checkpoint while the buffer has room: one event-loop pass then
                # delivers many results instead of one (a poll syscall per result).
                send.send_nowait(result)
            except anyio.WouldBlock:
                return emit_waiting(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()  # the consumer left the loop: stop the work
                return None
            if tick is not None:
                tick(1)
            return None

        async def emit_waiting(result: ScrapeResult) -> None:
            try:
                await send.send(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()
                return
            if tick is not None:
                tick(1)

        failures: list[Exception] = []
        finished: list[bool] = []

        async def runner() -> None:
            self._iterations.add(scope)
            try:
                with scope:
                    async with send:
                        await self._execute(
                            urls, scrape_func, delay, emit, lookahead, workers, None
                        )
                        finished.append(True)
            except Exception as exc:  # hand it to the consumer, not the scraper's group
                failures.append(exc)
            finally:
                self._iterations.discard(scope)

        self._tg.start_soon(runner)
        try:
            while True:
                # Drain what is buffered without a checkpoint per result (see emit); wait
                # only when the buffer is empty. At most `workers` results are buffered.
                try:
                    result = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        result = await receive.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                yield result
            # Closed mid-iteration: workers may have hit the closed scraper before the
            # cancellation reached them; the cause that matters is the close itself.
            if failures and not (self.closed and not finished):
                raise failures[0]
            if not finished:
                raise ClosedError("the AsyncScraper was closed before scrape_iter() finished")
        finally:
            # Only synchronous calls here: this may run from a garbage collector hook.
            scope.cancel()
            receive.close()
            if tick is not None:
                tick(0)

    def _run(
        self,
        jobs: Iterator[Job[ScrapeResult]],
        scrape_func: ScrapeFunc | None,
        delay: float,
        emit: Emit,
        lookahead: int,
        workers: int,
    ) -> Run[ScrapeResult]:
        def handle(job: Job[ScrapeResult]) -> Awaitable[ScrapeResult]:
            # Returns the pipeline's coroutine itself: one coroutine object less per URL.
            assert job.platform is not None
            if scrape_func is None:
                return self._get(job.url, job.platform, delay)
            return self._process(job.url, job.platform, scrape_func, delay)

        def emit_counted(job: Job[ScrapeResult], result: ScrapeResult) -> Awaitable[None] | None:
            self._finish(result)  # decided up front: counted here, not in the pipeline
            return emit(job, result)

        return Run(
            jobs,
            handle=handle,
            emit=emit,
            lookahead=lookahead,
            workers=workers,
            emit_decided=emit_counted,
        )


def _progress(progress: Progress, total: int | None) -> Callable[[int], None] | None:
    """A ``tick(n)`` advancing the progress display by ``n``; ``tick(0)`` finishes it."""
    if progress is None or progress is False:
        return None
    if progress is True:
        tqdm_auto = require("tqdm.auto", "progress", "tqdm")
        bar = tqdm_auto.tqdm(total=total, unit="url")

        def tick_bar(n: int) -> None:
            if n:
                bar.update(n)
            else:
                bar.close()

        return tick_bar
    callback = progress
    done = 0

    def tick_callback(n: int) -> None:
        nonlocal done
        if n:
            done += n
            callback(done, total)

    return tick_callback
