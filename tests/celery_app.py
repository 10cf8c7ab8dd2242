"""The Celery app the Celery test runs in a real worker process (configured by env vars).

It is the documented pattern (docs/scale.md) with the test's servers filled in: one
:class:`~leadperf.integrations.celery.ScrapeWorker` per process, its scraper sharing
limits and dedup on Redis, results upserted into PostgreSQL.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from leadperf import AsyncScraper, RetryPolicy
from leadperf.integrations.celery import ScrapeWorker, WorkerResources
from leadperf.optimize import DatabaseOptimizer
from leadperf.scale import DedupSet, RedisLimiter

BROKER = os.environ["LEADPERF_CELERY_BROKER"]
STATE = os.environ["LEADPERF_CELERY_STATE"]
DSN = os.environ["LEADPERF_CELERY_DSN"]
NAME = os.environ["LEADPERF_CELERY_NAME"]
LIMITS: dict[str, int] = json.loads(os.environ["LEADPERF_CELERY_LIMITS"])

app = Celery("celery_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


def build() -> WorkerResources:
    limiter = RedisLimiter.from_url(STATE, prefix=f"{NAME}:limit")
    dedup = DedupSet.from_url(STATE, name=NAME)
    scraper = AsyncScraper(
        limits=LIMITS, limiter=limiter, dedup=dedup, retry=RetryPolicy(attempts=1)
    )
    return WorkerResources(
        scraper=scraper,
        database=DatabaseOptimizer(DSN, pool_size=1, max_overflow=1),
        closing=(limiter, dedup),
    )


worker = ScrapeWorker(app, build)


# Celery ships no type hints, so its decorator would erase this function's signature.
@app.task(name="celery_app.scrape_chunk")  # type: ignore[untyped-decorator]
def scrape_chunk(urls: list[str], table: str) -> dict[str, Any]:
    return worker.scrape_into(urls, table=table, key=("url",), delay_seconds=0.005)
