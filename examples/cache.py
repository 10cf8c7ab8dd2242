"""Caches: one protocol over memory, SQLite, Redis and PostgreSQL; @cached with single-flight.

Run: python3 examples/cache.py            (memory and SQLite; Redis too when REDIS_URL is set)
"""

from __future__ import annotations

import os
import tempfile

import anyio

from leadperf import cached
from leadperf.cache import from_url


async def main() -> None:
    urls = ["memory://", f"sqlite:///{tempfile.mkdtemp()}/cache.db"]
    if os.environ.get("REDIS_URL"):
        urls.append(os.environ["REDIS_URL"])
    for url in urls:
        async with from_url(url, namespace="example") as cache:
            await cache.set("lead:1", {"email": "ada@example.com"}, ttl=60)
            print(f"{cache.scheme:<7} get -> {await cache.get('lead:1')}")
            print(f"{cache.scheme:<7} add again -> {await cache.add('lead:1', {})} (dedup)")
            print(f"{cache.scheme:<7} cleared {await cache.clear('lead:*')} keys; {cache.stats()}")

    calls = 0
    async with from_url("memory://") as cache:

        @cached(cache, ttl=300)
        async def score(company: str) -> float:
            nonlocal calls
            calls += 1
            await anyio.sleep(0.05)  # an expensive lookup
            return len(company) / 10

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(score, "leadperf")
        print(f"20 concurrent calls, computed {calls} time(s) (single-flight)")


if __name__ == "__main__":
    anyio.run(main)
