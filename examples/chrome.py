"""ChromePool: one tab per task on pooled headless Chrome; nothing left running after.

Run: python3 examples/chrome.py   (needs chromium and chromedriver)
"""

from __future__ import annotations

import anyio
from _site import start_site

from leadperf import ChromePool


async def main() -> None:
    base = start_site()
    with ChromePool(pool_size=1) as pool:
        for i in range(3):
            async with pool.session_async(f"task-{i}") as driver:
                await anyio.to_thread.run_sync(driver.get, f"{base}/company/{i}")
                title = await anyio.to_thread.run_sync(lambda: driver.title)
                print(f"task-{i}: {title}")
        stats = pool.stats()
    print(f"instances created={stats.created} tasks={stats.tasks}")


if __name__ == "__main__":
    anyio.run(main)
