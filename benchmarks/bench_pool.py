"""ChromePool vs a new Selenium Chrome per task, against a page served on 127.0.0.1.

    python3 benchmarks/bench_pool.py            # about 1.5 minutes on 2 cores

Reports, in one run (median of 10 unless said), for a pool in the default isolation mode:
cold start to first page loaded; warm ``session()`` acquire alone; acquire plus the same
page; a navigation in an already open tab (the floor); the pool's tab reset on release.
Then, for each isolation mode (the default first), pages per minute for 60 page tasks with
2 workers, a pool of 2 against a new driver per task; the CPU time (user + system, all
cores) Chrome and chromedriver spend per page task on each side, which bounds pages per
minute on a small host; CPU per task, per tab reset and per navigation in a warm pool of
one; and one instance's memory (summed RSS, PSS, USS of its process tree, psutil
``memory_full_info``).

Both sides of each throughput comparison do the same page work (load the page, read its
title) and start Chrome with the same flags (the pool's flags for that mode, from
``build_options``); the pooled figure includes starting its two instances, the
driver-per-task one includes every start and quit.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from leadperf._chrome.options import DEFAULT_ISOLATION, ISOLATION_MODES, build_options
from leadperf.pool import ChromePool

RUNS = 10
TASKS = 60
WORKERS = 2
DEFAULT = DEFAULT_ISOLATION
MODES = (DEFAULT, *(m for m in ISOLATION_MODES if m != DEFAULT))
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


def tree_cpu(pool: ChromePool) -> float:
    """CPU seconds used so far by the pool's chromedriver and Chrome processes.

    Each process's own time plus that of the children it reaped (Chrome's zygote reaps the
    renderers of closed tabs), so processes that already exited are counted too.
    """
    total = 0.0
    for inst in pool.stats().instances:
        if inst.driver_pid is None:
            continue
        try:
            root = psutil.Process(inst.driver_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def reaped_cpu() -> float:
    """CPU seconds of this process's exited children (chromedriver, and what it reaped)."""
    t = os.times()
    return t.children_user + t.children_system


def throughput_rows(
    runs: dict[str, tuple[tuple[float, float, int, float], tuple[float, float]]], cores: int
) -> list[tuple[str, str, str]]:
    rows = []
    for mode, ((ppm, release, created, cpu), (base_ppm, base_cpu)) in runs.items():
        ratio = ppm / base_ppm
        rows += [
            (
                f'pages/minute, {TASKS} tasks, {WORKERS} workers: pool of {WORKERS}, isolation="{mode}"',
                f"{ppm:.0f}",
                f"{ratio:.1f}x driver-per-task (>= 4x: {'met' if ratio >= 4 else 'MISSED'}); "
                f"release median {ms(release)}; {created} instances started",
            ),
            (
                f'pages/minute, {TASKS} tasks, {WORKERS} workers: new driver per task, "{mode}" flags',
                f"{base_ppm:.0f}",
                "",
            ),
            (
                f'CPU per page task in those runs: pool, isolation="{mode}" / new driver per task',
                f"{ms(cpu)} / {ms(base_cpu)}",
                f"{cores} cores allow at most {cores * 60 / cpu:.0f} / {cores * 60 / base_cpu:.0f} "
                "pages/minute (driver per task: exited processes only, a lower bound)",
            ),
        ]
    return rows


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

    def new_driver(isolation: str = "context") -> Any:
        # The pool's own flags for that mode (headless, required flags, disabled features,
        # the mode's extra flags): a fair baseline.
        options = build_options(None, headless=True, binary=chrome, extra=(), isolation=isolation)
        return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))

    def load(driver: Any) -> None:
        driver.get(page_url())
        assert driver.title == "lead"

    # 1. Cold start + page (plain Selenium, what driver-per-task pays).
    def cold() -> float:
        started = time.perf_counter()
        driver = new_driver(DEFAULT)
        load(driver)
        took = time.perf_counter() - started
        driver.quit()
        return took

    cold_page = median_of(cold)

    # 2-5. A warm pool of one.
    with ChromePool(
        pool_size=1, chrome_binary=chrome, driver_path=driver_path, isolation=DEFAULT
    ) as pool:
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
        cpu_before = tree_cpu(pool)
        warm_page = median_of(acquire_page)
        cpu_task = (tree_cpu(pool) - cpu_before) / RUNS
        reset = median_of(timed_release)
        with pool.session("nav") as driver:
            # The tab reset alone (what release does after its cheap checks), 10 times.
            cpu_before = tree_cpu(pool)
            for _ in range(RUNS):
                pool._instances[0].instance.prepare_tab()
            cpu_reset = (tree_cpu(pool) - cpu_before) / RUNS
            load(driver)

            def navigate() -> float:
                started = time.perf_counter()
                load(driver)
                return time.perf_counter() - started

            cpu_before = tree_cpu(pool)
            nav = median_of(navigate)
            cpu_nav = (tree_cpu(pool) - cpu_before) / RUNS
            pool._instances[0].instance.sample_memory()
            inst = pool.stats().instances[0]
        stats = pool.stats()

    # 6. Throughput: 60 page tasks, 2 workers.
    def run_tasks(task: Callable[[int], None]) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as ex:
            list(ex.map(task, range(TASKS)))
        return TASKS / (time.perf_counter() - started) * 60

    def pooled_run(isolation: str) -> tuple[float, float, int, float]:
        """Pages/minute, median release time, instances started, CPU s per task."""
        released: list[float] = []
        with ChromePool(
            pool_size=WORKERS, chrome_binary=chrome, driver_path=driver_path, isolation=isolation
        ) as pool2:

            def pooled(n: int) -> None:
                driver = pool2.acquire(f"task-{n}")
                load(driver)
                started = time.perf_counter()
                pool2.release(f"task-{n}", driver)
                released.append(time.perf_counter() - started)

            ppm = run_tasks(pooled)
            # Both instances started inside the run, so their CPU so far is the run's.
            cpu = tree_cpu(pool2) / TASKS
            return ppm, statistics.median(released), pool2.stats().created, cpu

    def per_task_run(isolation: str) -> tuple[float, float]:
        """Pages/minute and CPU s per task (exited processes) with a new driver per task."""

        def per_task(n: int) -> None:
            driver = new_driver(isolation)
            try:
                load(driver)
            finally:
                driver.quit()

        cpu_before = reaped_cpu()
        ppm = run_tasks(per_task)
        return ppm, (reaped_cpu() - cpu_before) / TASKS

    # Each pooled mode against a driver per task started with that mode's flags.
    runs = {}
    for mode in MODES:
        runs[mode] = (pooled_run(mode), per_task_run(mode))
    cores = os.cpu_count() or 1
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
        (f'pool: release (isolation="{DEFAULT}"), median of 10', ms(reset), ""),
        *throughput_rows(runs, cores),
        (
            "CPU, warm pool of 1: acquire + page + release / tab reset alone / navigation",
            f"{ms(cpu_task)} / {ms(cpu_reset)} / {ms(cpu_nav)}",
            f'means of 10, isolation="{DEFAULT}"',
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
