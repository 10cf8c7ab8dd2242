"""ChromePool vs a new Selenium Chrome per task, against a page served on 127.0.0.1.

    python3 benchmarks/bench_pool.py            # about 3 minutes on 2 cores

Reports, in one run (median of 10 unless said): cold start to first page loaded; warm
``session()`` acquire alone; acquire plus the same page; a navigation in an already open
tab (the floor); the pool's tab reset on release; pages per minute for 60 page tasks with
2 workers (pool of 2 vs a new driver per task, and the pool again with Chrome's omnibox
WebUI preloading turned off); and one instance's memory (summed RSS, PSS, USS of its
process tree, psutil ``memory_full_info``).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from leadperf._chrome_instance import chrome_flags
from leadperf.pool import ChromePool

RUNS = 10
TASKS = 60
WORKERS = 2
# Chrome 156 preloads an omnibox WebUI renderer in every browser context, so every task's
# fresh context pays for one; these features turn it off (not in the pool's default flags).
LEAN = ["--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup"]
PAGE = (
    "<html><head><title>lead</title></head><body><h1>Acme Corp</h1>"
    + "".join(f"<p class='lead'>Contact {i}: person{i}@example.com</p>" for i in range(200))
    + "</body></html>"
).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        try:
            self.wfile.write(PAGE)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a favicon fetch cut short when its tab closed

    def log_message(self, *args: Any) -> None:
        pass


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def median_of(fn: Callable[[], float], runs: int = RUNS) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> None:
    chrome = shutil.which("chromium") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chrome or not driver_path:
        sys.exit("needs chromium and chromedriver on PATH")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url_base = f"http://127.0.0.1:{httpd.server_address[1]}"
    counter = iter(range(10**9))

    def page_url() -> str:
        return f"{url_base}/lead/{next(counter)}"

    def new_driver() -> Any:
        options = webdriver.ChromeOptions()
        for flag in chrome_flags(headless=True):
            options.add_argument(flag)
        options.binary_location = chrome
        return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))

    def load(driver: Any) -> None:
        driver.get(page_url())
        assert driver.title == "lead"

    # 1. Cold start + page (plain Selenium, what driver-per-task pays).
    def cold() -> float:
        started = time.perf_counter()
        driver = new_driver()
        load(driver)
        took = time.perf_counter() - started
        driver.quit()
        return took

    cold_page = median_of(cold)

    # 2-5. A warm pool of one.
    with ChromePool(pool_size=1, chrome_binary=chrome, driver_path=driver_path) as pool:
        with pool.session("warm-up") as driver:
            load(driver)

        def acquire_alone() -> float:
            started = time.perf_counter()
            driver = pool.acquire("t")
            took = time.perf_counter() - started
            pool.release("t", driver)
            return took

        def acquire_page() -> float:
            started = time.perf_counter()
            driver = pool.acquire("t")
            load(driver)
            took = time.perf_counter() - started
            pool.release("t", driver)
            return took

        releases: list[float] = []

        def timed_release() -> float:
            driver = pool.acquire("t")
            load(driver)
            started = time.perf_counter()
            pool.release("t", driver)
            releases.append(time.perf_counter() - started)
            return releases[-1]

        warm_acquire = median_of(acquire_alone)
        warm_page = median_of(acquire_page)
        reset = median_of(timed_release)
        with pool.session("nav") as driver:
            load(driver)

            def navigate() -> float:
                started = time.perf_counter()
                load(driver)
                return time.perf_counter() - started

            nav = median_of(navigate)
            pool._instances[0].sample_memory()
            inst = pool.stats().instances[0]
        stats = pool.stats()

    # 6. Throughput: 60 page tasks, 2 workers.
    def run_tasks(task: Callable[[int], None]) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as ex:
            list(ex.map(task, range(TASKS)))
        return TASKS / (time.perf_counter() - started) * 60

    def pooled_run(options: list[str] | None) -> tuple[float, float, int]:
        """Pages/minute, median release time, instances started."""
        released: list[float] = []
        with ChromePool(
            pool_size=WORKERS, chrome_binary=chrome, driver_path=driver_path, options=options
        ) as pool2:

            def pooled(n: int) -> None:
                driver = pool2.acquire(f"task-{n}")
                load(driver)
                started = time.perf_counter()
                pool2.release(f"task-{n}", driver)
                released.append(time.perf_counter() - started)

            ppm = run_tasks(pooled)
            return ppm, statistics.median(released), pool2.stats().created

    pooled_ppm, pooled_release, pooled_created = pooled_run(None)
    lean_ppm, lean_release, _ = pooled_run(LEAN)

    def per_task(n: int) -> None:
        driver = new_driver()
        try:
            load(driver)
        finally:
            driver.quit()

    per_task_ppm = run_tasks(per_task)
    httpd.shutdown()

    rows = [
        ("cold start + page (new driver), median of 10", ms(cold_page), ""),
        (
            "pool: warm `session()` acquire alone, median of 10",
            ms(warm_acquire),
            f"p50 < 20 ms: {'met' if warm_acquire < 0.020 else 'MISSED'}",
        ),
        (
            "pool: acquire + same page, median of 10",
            ms(warm_page),
            f"{cold_page / warm_page:.1f}x faster than cold (>= 6x: "
            f"{'met' if cold_page / warm_page >= 6 else 'MISSED'})",
        ),
        ("navigate an already open tab (floor), median of 10", ms(nav), ""),
        ("pool: release (new context + tab, old one disposed), median of 10", ms(reset), ""),
        (
            f"pages/minute, {TASKS} tasks, {WORKERS} workers: pool of {WORKERS}",
            f"{pooled_ppm:.0f}",
            f"{pooled_ppm / per_task_ppm:.1f}x driver-per-task (>= 4x: "
            f"{'met' if pooled_ppm / per_task_ppm >= 4 else 'MISSED'}); "
            f"{pooled_created} instances started",
        ),
        (
            f"pages/minute, {TASKS} tasks, {WORKERS} workers: new driver per task",
            f"{per_task_ppm:.0f}",
            "",
        ),
        (
            f"pages/minute, pool of {WORKERS} with options=[{LEAN[0]}]",
            f"{lean_ppm:.0f}",
            f"{lean_ppm / per_task_ppm:.1f}x driver-per-task; release median {ms(lean_release)} "
            f"(default flags: {ms(pooled_release)} in the same kind of run)",
        ),
        (
            "one instance, process tree: PSS",
            f"{inst.pss_mb:.0f} MB",
            f"< 500 MB: {'met' if (inst.pss_mb or 0) < 500 else 'MISSED'}",
        ),
        (
            "one instance, process tree: USS / summed RSS",
            f"{inst.uss_mb:.0f} / {inst.rss_mb:.0f} MB",
            "",
        ),
    ]
    print(f"\nChromePool benchmark (Chromium, {WORKERS} workers, page on 127.0.0.1)\n")
    print("| measurement | value | note |")
    print("|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    print(
        f"\npool acquire p50/p95 over the run: {stats.acquire_p50_ms:.1f} / "
        f"{stats.acquire_p95_ms:.1f} ms (includes the one cold start)"
    )


if __name__ == "__main__":
    main()
