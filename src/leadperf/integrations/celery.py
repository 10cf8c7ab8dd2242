"""Celery workers that scrape chunks of URLs on long-lived pools (``leadperf[celery]``).

Celery tasks are synchronous. Running ``asyncio.run()`` in each task builds a new event loop
per task, and every pooled connection made on the previous loop breaks ("attached to a
different loop"). :class:`ScrapeWorker` instead builds the scraper, its shared limiter and
dedup, and the database pool once per worker process, on leadperf's one blocking portal
(a long-lived event loop in a daemon thread); every task reuses them, and the worker's
shutdown closes them::

    app = Celery("crawl", broker="redis://broker:6379/0")

    def build() -> WorkerResources:
        limiter = RedisLimiter.from_url("redis://state:6379/0")
        dedup = DedupSet.from_url("redis://state:6379/0", name="crawl")
        return WorkerResources(
            scraper=AsyncScraper(limiter=limiter, dedup=dedup),
            database=DatabaseOptimizer("postgresql://..."),
            closing=(limiter, dedup),
        )

    worker = ScrapeWorker(app, build)

    @app.task(acks_late=True)
    def scrape_chunk(urls: list[str]) -> dict:
        return worker.scrape_into(urls, table="pages", key=("url",))

Resources are built lazily in the process that runs tasks (never in a prefork parent, so
nothing crosses a fork), eagerly at ``worker_process_init``, and closed at
``worker_process_shutdown`` (prefork children) or ``worker_shutdown`` (solo and threads
pools).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._portal import run_sync
from .._util import require
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..optimize.database import DatabaseOptimizer
    from ..scraper import AsyncScraper, ScrapeResult

__all__ = ["ScrapeWorker", "WorkerResources", "default_row"]

_log = logging.getLogger("leadperf.integrations.celery")

Row = Callable[["ScrapeResult"], Mapping[str, Any] | None]


@attrs.frozen
class WorkerResources:
    """What one worker process builds once and keeps: a scraper, a database, extras to close.

    ``closing`` holds objects with an async ``close()`` (a limiter, a dedup set, a cache)
    that the scraper uses but does not own; they are closed after the scraper.
    """

    scraper: AsyncScraper
    database: DatabaseOptimizer | None = None
    closing: Sequence[Any] = ()


def default_row(result: ScrapeResult) -> Mapping[str, Any] | None:
    """The row stored for a result: url, status, size and error; None for a duplicate."""
    if result.duplicate:
        return None
    return {
        "url": result.url,
        "status": result.status_code,
        "size": len(result.content) if result.content else 0,
        "error": None if result.error is None else type(result.error).__name__,
    }


class ScrapeWorker:
    """Per-process scraper and database for Celery tasks (see the module docstring).

    Args:
        app: the Celery app; its worker signals open and close the resources.
        build: called once per worker process, returning the :class:`WorkerResources`.

    Raises:
        MissingDependencyError: Celery is not installed (``pip install 'leadperf[celery]'``).
        ConfigError: ``build`` is not callable.
    """

    def __init__(self, app: Any, build: Callable[[], WorkerResources]) -> None:
        signals = require("celery.signals", "celery")

        if not callable(build):
            raise ConfigError(f"build: must be a callable, got {build!r}", key="build")
        self.app = app
        self._build = build
        self._lock = threading.Lock()
        self._resources: WorkerResources | None = None
        self._pid = 0
        self.builds = 0
        self.tasks = 0
        # weak=False: the handlers are bound methods of an object the app module keeps.
        signals.worker_process_init.connect(self._on_process_init, weak=False)
        signals.worker_process_shutdown.connect(self._on_shutdown, weak=False)
        signals.worker_shutdown.connect(self._on_shutdown, weak=False)

    def __repr__(self) -> str:
        state = "open" if self._resources is not None else "idle"
        return f"<ScrapeWorker pid={self._pid or None} builds={self.builds} {state}>"

    @property
    def resources(self) -> WorkerResources:
        """This process's resources, built and opened on first use."""
        with self._lock:
            if self._resources is not None and self._pid != os.getpid():
                # Inherited through a fork: the parent owns those sockets and threads.
                self._resources = None
            if self._resources is None:
                resources = self._build()
                if not isinstance(resources, WorkerResources):
                    raise ConfigError(
                        f"build() must return WorkerResources, got {type(resources).__name__}",
                        key="build",
                    )
                resources.scraper.__enter__()  # opens on the blocking portal's loop
                if resources.database is not None:
                    run_sync(resources.database.open)
                self._resources = resources
                self._pid = os.getpid()
                self.builds += 1
                _log.info("leadperf worker resources opened in process %d", self._pid)
            return self._resources

    @property
    def scraper(self) -> AsyncScraper:
        """This process's scraper (open)."""
        return self.resources.scraper

    def scrape(self, urls: Sequence[str], **options: Any) -> list[ScrapeResult]:
        """``scrape_batch_sync(urls, **options)`` on this process's scraper."""
        self.tasks += 1
        return self.scraper.scrape_batch_sync(list(urls), **options)

    def scrape_into(
        self,
        urls: Sequence[str],
        *,
        table: str,
        key: str | Sequence[str] = ("url",),
        row: Row = default_row,
        **options: Any,
    ) -> dict[str, int]:
        """Scrape ``urls`` and upsert one row per fetched URL into ``table``.

        Args:
            urls: the chunk of URLs this task handles.
            table: the table ``DatabaseOptimizer.bulk_upsert`` writes to.
            key: its unique key column(s).
            row: maps a result to a row mapping, or None to store nothing for it
                (default: :func:`default_row`, which skips URLs another worker took).
            **options: passed to ``scrape_batch_sync`` (``delay_seconds``, ``scrape_func``...).

        Returns:
            Counts: ``urls``, ``fetched``, ``duplicates``, ``failed``, ``rows``, ``builds``
            (resource builds in this process so far: 1 in a healthy worker), ``tasks``.

        Raises:
            ConfigError: the resources have no database.
            BulkUpsertError: writing the rows failed (the task may be retried: upserts
                are idempotent).
        """
        database = self.resources.database
        if database is None:
            raise ConfigError("scrape_into needs WorkerResources(database=...)", key="database")
        results = self.scrape(urls, **options)
        rows = [r for r in map(row, results) if r is not None]
        if rows:
            run_sync(lambda: database.bulk_upsert(table, rows, key=key))
        duplicates = sum(r.duplicate for r in results)
        return {
            "urls": len(results),
            "fetched": len(results) - duplicates,
            "duplicates": duplicates,
            "failed": sum(r.error is not None and not r.duplicate for r in results),
            "rows": len(rows),
            "builds": self.builds,
            "tasks": self.tasks,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        """Close this process's resources (scraper first, then database and extras).

        Idempotent; a later task builds fresh ones.
        """
        with self._lock:
            resources, self._resources = self._resources, None
            if resources is None or self._pid != os.getpid():
                return
            try:
                resources.scraper.__exit__(None, None, None)
            finally:
                for item in (resources.database, *resources.closing):
                    if item is not None:
                        try:
                            run_sync(item.close)
                        except Exception as exc:  # keep closing the rest
                            _log.warning("closing %r failed: %s", item, type(exc).__name__)
            _log.info("leadperf worker resources closed in process %d", os.getpid())

    def _on_process_init(self, **_: Any) -> None:
        self._resources = None  # whatever the parent had belongs to the parent
        try:
            self.resources  # noqa: B018 - open eagerly, so the first task pays nothing
        except Exception as exc:  # the first task will try again and report the error
            _log.warning("opening leadperf worker resources failed: %s", exc)

    def _on_shutdown(self, **_: Any) -> None:
        self.close()
