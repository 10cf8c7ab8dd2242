"""Chrome pool fault suite: killed browsers and drivers, hung pages, close under load, churn.

Real headless Chromium, real chromedriver, a real HTTP server on 127.0.0.1. Each test
asserts what is left afterwards (which processes run, which directories exist), that the
pool serves the next task, and records what it saw with the ``reliability`` fixture.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

import anyio
import anyio.to_thread
import psutil
import pytest
from selenium.common.exceptions import TimeoutException

from leadperf.errors import BrowserCrashedError, ClosedError
from leadperf.pool import ChromePool

pytestmark = pytest.mark.chrome


class ChromePaths(TypedDict):
    """The local Chromium and chromedriver, passed to ``ChromePool`` as ``**paths``."""

    chrome_binary: str
    driver_path: str


class HangServer:
    """``/hang`` never answers (until released); any other path is a small page."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hung = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/hang"):
                    server.hung += 1
                    server.release.wait(60)
                    return
                data = f"<html><title>{self.path}</title></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[HangServer]:
    srv = HangServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def paths(chrome_paths: tuple[str, str]) -> ChromePaths:
    return {"chrome_binary": chrome_paths[0], "driver_path": chrome_paths[1]}


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _footprint(pool: ChromePool) -> tuple[list[psutil.Process], list[str]]:
    """Every process behind the pool (crashpad handlers included) and every profile dir."""
    procs: list[psutil.Process] = []
    profiles: list[str] = []
    for inst in pool.stats().instances:
        assert inst.driver_pid is not None
        assert inst.browser_pid is not None
        driver = psutil.Process(inst.driver_pid)
        procs += [driver, *driver.children(recursive=True)]
        browser = psutil.Process(inst.browser_pid)
        profiles += [
            a.split("=", 1)[1] for a in browser.cmdline() if a.startswith("--user-data-dir=")
        ]
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info.get("cmdline") or ()
        if any(p in arg for arg in argv for p in profiles) and proc not in procs:
            procs.append(proc)
    return procs, profiles


def _left(procs: list[psutil.Process], profiles: list[str]) -> tuple[list[int], list[str]]:
    return [p.pid for p in procs if _running(p)], [d for d in profiles if os.path.exists(d)]


def _wait_gone(procs: list[psutil.Process], profiles: list[str], timeout: float = 15.0) -> float:
    """Seconds until nothing in ``procs``/``profiles`` is left; asserts it happens."""
    started = time.monotonic()
    while _left(procs, profiles) != ([], []) and time.monotonic() - started < timeout:
        time.sleep(0.02)
    assert _left(procs, profiles) == ([], []), "leftover processes or profile dirs"
    return time.monotonic() - started


def _serves(pool: ChromePool, server: HangServer, task: str) -> str:
    with pool.session(task) as driver:
        driver.get(server.url(f"/ok/{task}"))
        return str(driver.title)


def test_sigkill_of_a_browser_mid_task(
    paths: ChromePaths, server: HangServer, reliability: Any
) -> None:
    with ChromePool(pool_size=1, op_timeout=5, **paths) as pool:
        seen: list[tuple[list[psutil.Process], list[str]]] = []

        def task() -> None:
            with pool.session("victim") as driver:
                driver.get(server.url("/ok/victim"))
                seen.append(_footprint(pool))
                browser_pid = pool.stats().instances[0].browser_pid
                assert browser_pid is not None
                os.kill(browser_pid, signal.SIGKILL)
                driver.get(server.url("/ok/after-kill"))

        with pytest.raises(BrowserCrashedError, match="crashed or hung"):
            task()
        procs, profiles = seen[0]
        gone_in = _wait_gone(procs, profiles)
        assert pool.stats().size == 0, "the dead instance was dropped"
        started = time.monotonic()
        assert _serves(pool, server, "next") == "/ok/next"
        recovered = time.monotonic() - started
        stats = pool.stats()
        assert (stats.size, stats.crashed) == (1, 1)
    reliability.record(
        "chrome",
        "SIGKILL of the Chrome browser while a task drives it",
        "the task gets BrowserCrashedError; nothing left; the pool replaces the instance",
        f"BrowserCrashedError raised; {len(procs)} processes and the profile gone "
        f"{gone_in:.2f}s after release; the next task served in {recovered:.2f}s "
        f"(size back to {stats.size}/1)",
    )


def test_sigkill_of_chromedriver_mid_task(
    paths: ChromePaths, server: HangServer, reliability: Any
) -> None:
    with ChromePool(pool_size=1, op_timeout=5, **paths) as pool:
        errors: list[BaseException] = []
        try:
            with pool.session("victim") as driver:
                driver.get(server.url("/ok/victim"))
                procs, profiles = _footprint(pool)
                driver_pid = pool.stats().instances[0].driver_pid
                assert driver_pid is not None
                os.kill(driver_pid, signal.SIGKILL)
                driver.get(server.url("/ok/after-kill"))
        except BrowserCrashedError as exc:
            errors.append(exc)
        assert len(errors) == 1, "the task learned that its browser is gone"
        # Chrome outlived its chromedriver: release must have killed it and its helpers.
        gone_in = _wait_gone(procs, profiles)
        assert _serves(pool, server, "next") == "/ok/next"
        stats = pool.stats()
        assert (stats.size, stats.crashed) == (1, 1)
    reliability.record(
        "chrome",
        "SIGKILL of chromedriver while a task drives it (Chrome orphaned)",
        "the task gets BrowserCrashedError; the orphaned Chrome is killed; replaced",
        f"BrowserCrashedError raised; {len(procs)} processes (orphaned Chrome included) "
        f"and the profile gone {gone_in:.2f}s after release; next task served",
    )


def test_page_hung_past_its_timeout(
    paths: ChromePaths, server: HangServer, reliability: Any
) -> None:
    with ChromePool(pool_size=1, **paths) as pool:
        hung_before = server.hung
        with pool.session("slow") as driver:
            driver.set_page_load_timeout(1)
            started = time.monotonic()
            with pytest.raises(TimeoutException):
                driver.get(server.url("/hang/page"))
            waited = time.monotonic() - started
            released = time.monotonic()
        release_s = time.monotonic() - released
        assert waited < 10, "the page load gave up near its 1 s timeout"
        assert server.hung == hung_before + 1, "the page really hung on the server"
        # The instance was kept (only the page hung) and the next task gets a working tab
        # with the session's own page-load timeout, not the 1 s the last task set.
        with pool.session("next") as driver:
            assert driver.timeouts.page_load > 1
            driver.get(server.url("/ok/next"))
            assert driver.title == "/ok/next"
            assert driver.window_handles == [driver.current_window_handle]
        stats = pool.stats()
        assert (stats.size, stats.crashed, stats.tasks) == (1, 0, 2)
    reliability.record(
        "chrome",
        "a page that never answers, past the task's page-load timeout (1 s)",
        "the task gets the driver's TimeoutException; the tab is replaced, the instance kept",
        f"TimeoutException after {waited:.2f}s; release (tab replaced) {release_s:.2f}s; next "
        f"task served on the same instance with its default page-load timeout; "
        f"crashed={stats.crashed}",
    )


def test_hung_browser_is_killed_at_op_timeout(
    paths: ChromePaths, server: HangServer, reliability: Any
) -> None:
    with ChromePool(pool_size=1, op_timeout=2, **paths) as pool:
        driver = pool.acquire("frozen")
        driver.get(server.url("/ok/frozen"))
        procs, profiles = _footprint(pool)
        browser_pid = pool.stats().instances[0].browser_pid
        assert browser_pid is not None
        os.kill(browser_pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(BrowserCrashedError, match="hung"):
            pool.release("frozen", driver)
        detected = time.monotonic() - started
        assert detected < 2 * 2 + 5, "the reset's deadline fired"
        gone_in = _wait_gone(procs, profiles)
        assert _serves(pool, server, "next") == "/ok/next"
    reliability.record(
        "chrome",
        "Chrome frozen (SIGSTOP) while lent; op_timeout=2 s",
        "release raises BrowserCrashedError within op_timeout plus teardown; replaced",
        f"detected and killed in {detected:.2f}s; {len(procs)} processes and the profile "
        f"gone {gone_in:.2f}s later; next task served",
    )


def test_close_while_tasks_hold_drivers(
    paths: ChromePaths, server: HangServer, reliability: Any
) -> None:
    pool = ChromePool(pool_size=2, **paths)
    errors: dict[str, BaseException | None] = {}
    ready = threading.Barrier(3)

    def task(name: str) -> None:
        try:
            with pool.session(name) as driver:
                ready.wait(60)
                driver.get(server.url(f"/hang/{name}"))  # blocks until the pool closes
            errors[name] = None
        except BaseException as exc:
            errors[name] = exc

    hung_before = server.hung
    threads = [threading.Thread(target=task, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    ready.wait(60)
    deadline = time.monotonic() + 10
    while server.hung < hung_before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.hung == hung_before + 2, "both tasks were inside a page load"
    procs, profiles = _footprint(pool)
    started = time.monotonic()
    pool.close()
    closed_in = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    unblocked_in = time.monotonic() - started
    assert _left(procs, profiles) == ([], []), "close() returned with nothing left"
    assert set(errors) == {"a", "b"}
    for exc in errors.values():
        assert isinstance(exc, ClosedError), exc
        assert "closed while task" in str(exc)
    with pytest.raises(ClosedError):
        pool.acquire("late")
    reliability.record(
        "chrome",
        "close() while two tasks are inside page loads that never finish",
        "close kills everything; each task gets ClosedError saying the pool closed under it",
        f"close returned in {closed_in:.2f}s with {len(procs)} processes and 2 profiles gone; "
        f"both tasks got ClosedError within {unblocked_in:.2f}s",
    )


@pytest.mark.anyio
async def test_close_under_an_async_session(paths: ChromePaths, server: HangServer) -> None:
    pool = ChromePool(pool_size=1, **paths)
    entered, closed = anyio.Event(), anyio.Event()
    outcome: list[BaseException | None] = []

    async def task() -> None:
        try:
            async with pool.session_async("async-held") as driver:
                await anyio.to_thread.run_sync(driver.get, server.url("/ok/async"))
                entered.set()
                await closed.wait()  # the block ends normally, after the pool closed
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(task)
        await entered.wait()
        procs, profiles = _footprint(pool)
        await pool.aclose()
        assert _left(procs, profiles) == ([], [])
        closed.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ClosedError), outcome[0]
    assert "closed while task 'async-held'" in str(outcome[0])


_CYCLES = 2000
_WARMUP = 100
# Bounds for 2,000 cycles after warm-up: the host's RSS, open files and threads, and the
# instance's process count and PSS. A leak of one tab, thread or socket per cycle would
# exceed each of them many times over.
_RSS_BOUND_MB = 20.0
_FD_BOUND = 3
_PSS_BOUND_MB = 150.0


@pytest.mark.timeout(900)
def test_two_thousand_cycles_stay_bounded(paths: ChromePaths, reliability: Any) -> None:
    me = psutil.Process()
    with ChromePool(pool_size=1, max_tasks_per_instance=None, max_memory_mb=None, **paths) as pool:
        for n in range(_WARMUP):
            pool.release(n, pool.acquire(n))
        inst = pool.stats().instances[0]
        base = (me.memory_info().rss, me.num_fds(), me.num_threads())
        procs_before = len(_footprint(pool)[0])
        pss_before = _pss(inst.driver_pid)
        started = time.monotonic()
        for n in range(_CYCLES):
            driver = pool.acquire(("cycle", n))
            pool.release(("cycle", n), driver)
        elapsed = time.monotonic() - started
        stats = pool.stats()
        rss_growth = (me.memory_info().rss - base[0]) / 2**20
        fd_growth = me.num_fds() - base[1]
        thread_growth = me.num_threads() - base[2]
        procs_after = len(_footprint(pool)[0])
        pss_growth = _pss(inst.driver_pid) - pss_before
        same_instance = stats.instances[0].browser_pid == inst.browser_pid
    assert (stats.tasks, stats.created) == (_WARMUP + _CYCLES, 1)
    assert same_instance
    assert (stats.crashed, stats.recycled, stats.in_use) == (0, 0, 0)
    assert rss_growth < _RSS_BOUND_MB, f"host RSS grew {rss_growth:.1f} MB"
    assert fd_growth <= _FD_BOUND, f"host fds grew by {fd_growth}"
    assert thread_growth <= 1, f"host threads grew by {thread_growth}"
    assert procs_after <= procs_before + 1, f"processes {procs_before} -> {procs_after}"
    assert pss_growth < _PSS_BOUND_MB, f"Chrome PSS grew {pss_growth:.1f} MB"
    reliability.record(
        "chrome",
        f"{_CYCLES} acquire/release cycles on a pool of 1 (after {_WARMUP} warm-up)",
        f"no growth beyond: host RSS +{_RSS_BOUND_MB:g} MB, fds +{_FD_BOUND}, threads +1, "
        f"Chrome processes +1, Chrome PSS +{_PSS_BOUND_MB:g} MB",
        f"{elapsed:.1f}s ({elapsed / _CYCLES * 1000:.1f} ms/cycle); host RSS "
        f"{rss_growth:+.1f} MB, fds {fd_growth:+d}, threads {thread_growth:+d}; Chrome "
        f"processes {procs_before} -> {procs_after}, PSS {pss_growth:+.1f} MB; one instance",
    )


def _pss(driver_pid: int | None) -> float:
    """Summed PSS in MB of chromedriver and everything under it."""
    assert driver_pid is not None
    root = psutil.Process(driver_pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        total += getattr(info, "pss", info.rss)
    return total / 2**20
