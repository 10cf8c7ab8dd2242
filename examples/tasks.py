"""TaskOptimizer: a bounded priority queue for background work, with retries.

Run: python3 examples/tasks.py
"""

from __future__ import annotations

import anyio

from leadperf import RetryPolicy
from leadperf.optimize import TaskOptimizer
from leadperf.optimize.tasks import HIGH, LOW

attempts = {"n": 0}


async def enrich(lead_id: int) -> str:
    await anyio.sleep(0.01)
    return f"lead {lead_id} enriched"


async def flaky_webhook() -> str:
    attempts["n"] += 1
    if attempts["n"] < 3:
        raise ConnectionError("webhook not up yet")
    return "delivered"


async def main() -> None:
    retry = RetryPolicy(attempts=5, backoff=0.05, retry_on={ConnectionError})
    async with TaskOptimizer(workers=4, max_queued=100, retry=retry) as tasks:
        urgent = await tasks.submit(enrich, 1, priority=HIGH)
        batch = [await tasks.submit(enrich, i, priority=LOW) for i in range(2, 40)]
        hook = await tasks.submit(flaky_webhook)
        print(await urgent.result(), "|", await batch[-1].result())
        print(f"webhook: {await hook.result()} after {hook.attempts} attempts")
    print(tasks.stats())


if __name__ == "__main__":
    anyio.run(main)
