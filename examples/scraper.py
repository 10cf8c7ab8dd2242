"""AsyncScraper: per-platform limits, retries, one result per URL in input order.

Run: python3 examples/scraper.py
"""

from __future__ import annotations

import anyio
from _site import start_site

from leadperf import AsyncScraper, RetryPolicy


async def main() -> None:
    base = start_site()
    urls = [f"{base}/company/{i}" for i in range(50)] + ["not a url"]
    async with AsyncScraper(max_concurrent=10, retry=RetryPolicy(attempts=3)) as scraper:
        results = await scraper.scrape_batch(urls)
        stats = scraper.stats()
    ok = [r for r in results if r.ok]
    print(f"{len(ok)}/{len(urls)} ok; the bad input got its own result: {results[-1].error}")
    print(f"requests={stats.requests} failed={stats.failed} throughput={stats.throughput:.0f}/s")


if __name__ == "__main__":
    anyio.run(main)
