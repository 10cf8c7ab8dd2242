"""ChromePool against real headless Chromium and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

import anyio
import anyio.to_thread
import psutil
import pytest

from leadperf._chrome.isolation import FreshTabIsolation
from leadperf._chrome.options import DISABLED_FEATURES, REQUIRED_FLAGS, SHARED_RENDERER_FLAGS
from leadperf._chrome.ports import release_port, reserve_port
from leadperf.errors import (
    BrowserCrashedError,
    ClosedError,
    ConfigError,
    PoolError,
    PoolExhaustedError,
)
from leadperf.pool import _FRESH_S, ChromePool, PoolStats, get_chrome_pool

pytestmark = pytest.mark.chrome


class ChromePaths(TypedDict):
    """The local Chromium and chromedriver, passed to ``ChromePool`` as ``**paths``."""

    chrome_binary: str
    driver_path: str


# -- a local page server -------------------------------------------------------------------


class PageServer:
    """Serves small HTML pages and records each request's path and Cookie header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.auth: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Cookie")))
                server.auth.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/auth") and not self.headers.get("Authorization"):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="leads"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"<html><head><title>{self.path}</title></head><body>{self.path}"
                headers = [("Content-Type", "text/html")]
                if self.path.startswith("/cached"):
                    headers.append(("Cache-Control", "max-age=600"))
                if self.path.startswith("/set"):
                    headers.append(("Set-Cookie", "tracker=task-one; Path=/"))
                    body += (
                        "<script>localStorage.setItem('who', 'task-one');"
                        "sessionStorage.setItem('who', 'task-one');</script>"
                    )
                body += "</body></html>"
                data = body.encode()
                self.send_response(200)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cookies_for(self, path: str) -> list[str | None]:
        return [cookie for p, cookie in self.requests if p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[PageServer]:
    srv = PageServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def paths(chrome_paths: tuple[str, str]) -> ChromePaths:
    return {"chrome_binary": chrome_paths[0], "driver_path": chrome_paths[1]}


@pytest.fixture(scope="module")
def pool(paths: ChromePaths) -> Iterator[ChromePool]:
    """A shared pool of two (default isolation); tests use stat deltas, never absolute counters."""
    with ChromePool(pool_size=2, idle_timeout=300, **paths) as shared:
        yield shared
    assert shared.closed


@pytest.fixture(scope="module")
def context_pool(paths: ChromePaths) -> Iterator[ChromePool]:
    """A pool of one with a fresh browser context per task."""
    with ChromePool(pool_size=1, idle_timeout=300, isolation="context", **paths) as shared:
        yield shared


# -- utilities -------------------------------------------------------------------------------


def browser_pid(pool: ChromePool, driver: Any) -> int:
    """The pid of the Chrome browser process behind ``driver`` (from the pool's stats)."""
    for lease in pool._leases.values():
        if lease.instance.driver is driver:
            pid = lease.instance.browser_pid
            assert pid is not None
            return pid
    raise AssertionError("driver is not lent")


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie is dead; in a container without an init that
    reaps, reparented processes linger as zombies until the container's init reaps them)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pool_processes(stats: PoolStats, only_browser: int | None = None) -> list[psutil.Process]:
    """Every process behind the pool's instances: chromedriver, Chrome and its child processes."""
    procs: list[psutil.Process] = []
    profiles: list[str] = []
    for inst in stats.instances:
        if only_browser is not None and inst.browser_pid != only_browser:
            continue
        assert inst.driver_pid is not None
        driver = psutil.Process(inst.driver_pid)
        procs.append(driver)
        procs.extend(driver.children(recursive=True))
        browser = psutil.Process(inst.browser_pid)
        profiles += [
            a.split("=", 1)[1] for a in browser.cmdline() if a.startswith("--user-data-dir=")
        ]
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or ()
        if any(profile in arg for arg in cmdline for profile in profiles) and proc not in procs:
            procs.append(proc)
    return procs


def renderer_pids(browser: psutil.Process) -> set[int]:
    """Pids of the browser's live renderer processes (exited ones are skipped)."""
    pids = set()
    for proc in browser.children(recursive=True):
        try:
            if "--type=renderer" in proc.cmdline():
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# -- reuse, flags, isolation ----------------------------------------------------------------


def test_same_browser_process_serves_several_tasks(pool: ChromePool, server: PageServer) -> None:
    created = pool.stats().created
    pids, handles = [], []
    for n in range(3):
        with pool.session(f"reuse-{n}") as driver:
            driver.get(server.url(f"/reuse/{n}"))
            assert driver.title == f"/reuse/{n}"
            pids.append(browser_pid(pool, driver))
            handles.append(driver.current_window_handle)
            assert pool.stats().in_use == 1
    assert len(set(pids)) == 1, "one browser process served every task"
    assert len(set(handles)) == 3, "each task had its own tab"
    assert pool.stats().created - created <= 1
    assert [p for p, _ in server.requests if p.startswith("/reuse/")][-3:] == [
        "/reuse/0",
        "/reuse/1",
        "/reuse/2",
    ]
    stats = pool.stats()
    assert stats.acquire_p50_ms > 0
    assert stats.in_use == 0
    assert stats.idle == stats.size


def test_chrome_runs_with_the_required_flags(pool: ChromePool, server: PageServer) -> None:
    with pool.session("flags") as driver:
        driver.get(server.url("/flags"))
        cmdline = psutil.Process(browser_pid(pool, driver)).cmdline()
        inst = next(i for i in pool.stats().instances if i.busy)
    for flag in ("--headless=new", *REQUIRED_FLAGS):
        assert flag in cmdline
    assert ("--no-sandbox" in cmdline) == (os.geteuid() == 0)
    assert f"--remote-debugging-port={inst.debug_port}" in cmdline
    disabled = [a for a in cmdline if a.startswith("--disable-features=")]
    assert len(disabled) == 1
    assert set(DISABLED_FEATURES) <= set(disabled[0].split("=", 1)[1].split(","))
    profile = [a for a in cmdline if a.startswith("--user-data-dir=")]
    assert len(profile) == 1
    assert os.path.isdir(profile[0].split("=", 1)[1])


@pytest.mark.parametrize("which", ["pool", "context_pool"])
def test_tasks_do_not_share_cookies_or_storage(
    which: str, request: pytest.FixtureRequest, server: PageServer
) -> None:
    pool: ChromePool = request.getfixturevalue(which)
    with pool.session("iso-1") as driver:
        first_pid = browser_pid(pool, driver)
        driver.get(server.url(f"/set/a/{which}"))
        driver.get(server.url(f"/seen/a/{which}"))
        cookie = driver.get_cookie("tracker")
        assert cookie is not None
        assert cookie["value"] == "task-one"
        assert driver.execute_script("return localStorage.getItem('who')") == "task-one"
        # A window the task opens itself lands in Chrome's default context; it is
        # cleaned too.
        driver.switch_to.new_window("tab")
        driver.get(server.url(f"/set/b/{which}"))
        assert driver.execute_script("return localStorage.getItem('who')") == "task-one"
        assert len(driver.window_handles) == 2
    assert server.cookies_for(f"/seen/a/{which}") == ["tracker=task-one"], (
        "the cookie really was set"
    )

    with pool.session("iso-2") as driver:
        assert browser_pid(pool, driver) == first_pid, "same browser, new task"
        assert len(driver.window_handles) == 1, "the last task's tabs were closed"
        driver.get(server.url(f"/seen/b/{which}"))
        assert driver.get_cookies() == []
        assert driver.execute_script("return localStorage.getItem('who')") is None
        assert driver.execute_script("return sessionStorage.getItem('who')") is None
        # A window of its own, in the default context where task one's window was.
        driver.switch_to.new_window("tab")
        driver.get(server.url(f"/seen/c/{which}"))
        assert driver.execute_script("return localStorage.getItem('who')") is None
    assert server.cookies_for(f"/seen/b/{which}") == [None], (
        "the server saw no cookie from task one"
    )
    assert server.cookies_for(f"/seen/c/{which}") == [None], "nor in the default context"


def test_modes_share_what_docs_say(
    pool: ChromePool, context_pool: ChromePool, server: PageServer
) -> None:
    """Tab mode (the default) shares one renderer process and the HTTP auth cache between
    tasks, as docs/pool.md says; context mode shares neither."""
    assert pool.isolation == "tab"
    for shared, which in ((True, pool), (False, context_pool)):
        renderers, handles = [], []
        for n in range(2):
            with which.session(f"share-{shared}-{n}") as driver:
                path = f"/auth/{shared}/{n}"
                base = server.url("/")
                if n == 0:  # credentials in the URL: Chrome caches them for the realm
                    base = base.replace("http://", "http://lead:secret@")
                driver.get(base + path.lstrip("/"))
                handles.append(driver.current_window_handle)
                browser = psutil.Process(browser_pid(which, driver))
                renderers.append(renderer_pids(browser))
                cmdline = browser.cmdline()
        assert handles[0] != handles[1], "a new tab per task"
        assert all(flag in cmdline for flag in SHARED_RENDERER_FLAGS) == shared
        started = renderers[1] - renderers[0]
        assert bool(started) != shared, "tab mode: no new renderer for the second task"
        sent = [auth for p, auth in server.auth if p == f"/auth/{shared}/1"]
        assert bool(sent[0]) == shared, "auth cache shared in tab mode only"


# -- isolation="tab": one context per instance, cleared between tasks -------------------------

FETCH = (
    "const done = arguments[arguments.length - 1];"
    "fetch(arguments[0]).then(r => r.text()).then(done, e => done('error: ' + e));"
)


@pytest.fixture(scope="module")
def tab_pool(paths: ChromePaths) -> Iterator[ChromePool]:
    with ChromePool(pool_size=1, idle_timeout=300, isolation="tab", **paths) as shared:
        yield shared


def test_tab_mode_clears_cookies_storage_and_cache(
    tab_pool: ChromePool, server: PageServer
) -> None:
    other = server.url("/").replace("127.0.0.1", "localhost")  # a second origin
    with tab_pool.session("tab-1") as driver:
        first_pid = browser_pid(tab_pool, driver)
        first_handle = driver.current_window_handle
        driver.get(server.url("/set/tab-a"))
        driver.get(server.url("/seen/tab-a"))
        assert driver.execute_script("return localStorage.getItem('who')") == "task-one"
        assert driver.execute_script("return sessionStorage.getItem('who')") == "task-one"
        for _ in range(2):  # the second fetch comes from the HTTP cache
            assert "/cached/tab" in driver.execute_async_script(FETCH, "/cached/tab")
        # A tab the task opens itself, on another origin: closed and cleared too.
        driver.switch_to.new_window("tab")
        driver.get(other + "set/tab-b")
        driver.get(other + "seen/tab-b")
        assert len(driver.window_handles) == 2
    assert server.cookies_for("/seen/tab-a") == ["tracker=task-one"], "the cookie really was set"
    assert server.cookies_for("/seen/tab-b") == ["tracker=task-one"]
    assert len(server.cookies_for("/cached/tab")) == 1, "served once, then from the cache"

    with tab_pool.session("tab-2") as driver:
        assert browser_pid(tab_pool, driver) == first_pid, "same browser, new task"
        assert driver.current_window_handle != first_handle, "a new tab"
        assert len(driver.window_handles) == 1, "the last task's tabs were closed"
        assert not tab_pool.stats().instances[0].context_isolation
        driver.get(server.url("/seen/tab-c"))
        assert driver.execute_script("return localStorage.getItem('who')") is None
        assert driver.execute_script("return sessionStorage.getItem('who')") is None
        assert "/cached/tab" in driver.execute_async_script(FETCH, "/cached/tab")
        driver.get(other + "seen/tab-d")
        assert driver.execute_script("return localStorage.getItem('who')") is None
    assert server.cookies_for("/seen/tab-c") == [None], "the server saw no cookie from task one"
    assert server.cookies_for("/seen/tab-d") == [None], "nor on the other origin"
    assert server.cookies_for("/cached/tab")[1:] == [None], "the HTTP cache was cleared"


def test_fresh_tab_strategy_without_devtools_clears_the_last_task(
    tab_pool: ChromePool, server: PageServer
) -> None:
    """The strategy used when a remote end exposes no DevTools endpoint, on its own."""
    with tab_pool.session("fresh-1") as driver:
        driver.get(server.url("/set/fresh-a"))
        driver.get(server.url("/seen/fresh-a"))
        assert driver.execute_script("return localStorage.getItem('who')") == "task-one"
        driver.switch_to.new_window("tab")  # a second tab the task leaves open
        driver.get(server.url("/seen/fresh-b"))
        old_handles = set(driver.window_handles)
        strategy = FreshTabIsolation(driver, None, op_timeout=15.0)
        strategy.reset(clear=True)
        assert strategy.handle == driver.current_window_handle
        assert strategy.handle not in old_handles, "a new tab"
        assert driver.window_handles == [strategy.handle], "every other tab closed"
        driver.get(server.url("/seen/fresh-c"))
        assert driver.execute_script("return localStorage.getItem('who')") is None
    assert server.cookies_for("/seen/fresh-a") == ["tracker=task-one"], "the cookie was set"
    assert server.cookies_for("/seen/fresh-c") == [None], "and cleared by the reset"


def test_tab_mode_crash_is_replaced(tab_pool: ChromePool, server: PageServer) -> None:
    before = tab_pool.stats()
    crashing = tab_pool.session("tab-crash")
    with pytest.raises(BrowserCrashedError), crashing as driver:  # noqa: PT012
        pid = browser_pid(tab_pool, driver)
        os.kill(pid, signal.SIGKILL)
        driver.get(server.url("/tab/crash"))
    assert tab_pool.stats().crashed - before.crashed == 1
    with tab_pool.session("tab-after-crash") as driver:
        assert browser_pid(tab_pool, driver) != pid
        driver.get(server.url("/tab/replaced"))
        assert driver.title == "/tab/replaced"
    assert [i.context_isolation for i in tab_pool.stats().instances] == [False]


def test_timeouts_set_by_a_task_are_reset(pool: ChromePool, server: PageServer) -> None:
    with pool.session("timeouts-1") as driver:
        driver.implicitly_wait(7)
        pid = browser_pid(pool, driver)
    with pool.session("timeouts-2") as driver:
        assert browser_pid(pool, driver) == pid
        assert driver.timeouts.implicit_wait == 0


# -- exhaustion ------------------------------------------------------------------------------


def test_exhausted_pool_waits_then_raises(pool: ChromePool) -> None:
    before = pool.stats()
    one = pool.acquire("busy-1")
    two = pool.acquire("busy-2")
    try:
        assert pool.stats().in_use == 2
        assert pool.stats().utilization == 1.0
        started = time.monotonic()
        with pytest.raises(PoolExhaustedError):
            pool.acquire("busy-3", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3.0

        # A release while someone waits hands the instance over.
        threading.Timer(0.3, pool.release, ("busy-1", one)).start()
        started = time.monotonic()
        three = pool.acquire("busy-3", timeout=10)
        waited = time.monotonic() - started
        assert 0.2 <= waited < 8
        assert three is one
        pool.release("busy-3", three)
    finally:
        pool.release("busy-2", two)
        if "busy-1" in pool._leases:
            pool.release("busy-1", one)
    after = pool.stats()
    assert after.timeouts - before.timeouts == 1
    assert after.waits - before.waits == 2
    assert after.in_use == 0


def test_misuse_is_reported(pool: ChromePool) -> None:
    driver = pool.acquire("dup")
    try:
        with pytest.raises(PoolError, match="already holds"):
            pool.acquire("dup", timeout=0.1)
        with pytest.raises(PoolError, match="holds no driver"):
            pool.release("nobody", driver)
    finally:
        pool.release("dup", driver)


# -- crashes ---------------------------------------------------------------------------------


def test_browser_killed_mid_task_raises_and_is_replaced(
    pool: ChromePool, server: PageServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leadperf")
    before = pool.stats()
    with pool.session("crash") as driver:
        driver.get(server.url("/crash/before"))
        pid = browser_pid(pool, driver)
        victims = pool_processes(pool.stats(), only_browser=pid)
    crashing = pool.session("crash")
    # The kill happens mid-task, inside the block: several statements by design.
    with pytest.raises(BrowserCrashedError) as info, crashing as driver:  # noqa: PT012
        assert browser_pid(pool, driver) == pid
        os.kill(pid, signal.SIGKILL)
        driver.get(server.url("/crash/after"))
    assert info.value.__cause__ is not None, "chained to the WebDriver error"
    assert wait_for(lambda: not any(running(p) for p in victims))
    after = pool.stats()
    assert after.crashed - before.crashed == 1
    assert pid not in {i.browser_pid for i in after.instances}
    logged = [r.getMessage() for r in caplog.records if r.name == "leadperf.pool"]
    assert any(f"browser pid {pid}) crashed" in m for m in logged), logged

    with pool.session("after-crash") as driver:
        driver.get(server.url("/crash/replaced"))
        assert driver.title == "/crash/replaced"
        assert browser_pid(pool, driver) != pid


def test_browser_killed_between_calls_fails_release(pool: ChromePool) -> None:
    driver = pool.acquire("crash-quiet")
    pid = browser_pid(pool, driver)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not running(psutil.Process(pid)) if psutil.pid_exists(pid) else True)
    before = pool.stats().crashed
    with pytest.raises(BrowserCrashedError, match="crash-quiet"):
        pool.release("crash-quiet", driver)
    assert pool.stats().crashed == before + 1
    assert "crash-quiet" not in pool._leases


def test_hung_browser_is_detected_and_replaced(paths: ChromePaths, server: PageServer) -> None:
    with ChromePool(pool_size=1, op_timeout=4.0, **paths) as hung_pool:
        with hung_pool.session("warm") as driver:
            driver.get(server.url("/hung/warm"))
            pid = browser_pid(hung_pool, driver)
        time.sleep(_FRESH_S + 0.1)  # past the window in which a reset instance skips the ping
        os.kill(pid, signal.SIGSTOP)  # alive but unresponsive
        try:
            started = time.monotonic()
            with hung_pool.session("after-hang") as driver:
                assert browser_pid(hung_pool, driver) != pid
                driver.get(server.url("/hung/after"))
                assert driver.title == "/hung/after"
            assert time.monotonic() - started < 30
        finally:
            with_suppressed_kill(pid, signal.SIGCONT)
        assert hung_pool.stats().crashed == 1
        assert wait_for(lambda: not psutil.pid_exists(pid) or not running(psutil.Process(pid)))


def with_suppressed_kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- lifecycle: reaping, recycling, two pools, close -------------------------------------------


def test_idle_instances_are_reaped(paths: ChromePaths, server: PageServer) -> None:
    with ChromePool(pool_size=1, idle_timeout=0.5, **paths) as reaping:
        with reaping.session("reap") as driver:
            driver.get(server.url("/reap"))
        procs = pool_processes(reaping.stats())
        assert reaping.stats().size == 1
        assert wait_for(lambda: reaping.stats().size == 0, timeout=10)
        assert reaping.stats().reaped == 1
        assert wait_for(lambda: not any(running(p) for p in procs))
        with reaping.session("after-reap") as driver:  # a new instance starts lazily
            driver.get(server.url("/reap/again"))
        assert reaping.stats().created == 2


def test_instances_are_recycled_after_n_tasks(paths: ChromePaths, server: PageServer) -> None:
    with ChromePool(pool_size=1, max_tasks_per_instance=2, **paths) as recycling:
        pids = []
        for n in range(3):
            with recycling.session(f"recycle-{n}") as driver:
                driver.get(server.url(f"/recycle/{n}"))
                pids.append(browser_pid(recycling, driver))
                if n == 1:
                    old = pool_processes(recycling.stats())
        assert pids[0] == pids[1] != pids[2]
        stats = recycling.stats()
        assert (stats.recycled, stats.created, stats.tasks) == (1, 2, 3)
        assert not any(running(p) for p in old)


def test_instances_are_recycled_above_the_memory_ceiling(
    paths: ChromePaths, server: PageServer
) -> None:
    with ChromePool(pool_size=1, max_memory_mb=20, **paths) as small:
        with small.session("fat") as driver:
            driver.get(server.url("/memory"))
            pid = browser_pid(small, driver)
            pss = next(i.pss_mb for i in small.stats().instances)
        assert pss is not None
        assert pss > 20, "a Chrome tree is far above 20 MB of PSS"
        stats = small.stats()
        assert stats.recycled == 1
        assert stats.size == 0
        assert not psutil.pid_exists(pid) or not running(psutil.Process(pid))


def test_two_pools_get_distinct_ports(
    pool: ChromePool, paths: ChromePaths, server: PageServer
) -> None:
    other = ChromePool(pool_size=1, **paths)
    with other, pool.session("a") as d1, other.session("b") as d2:
        d1.get(server.url("/two/a"))
        d2.get(server.url("/two/b"))
        assert (d1.title, d2.title) == ("/two/a", "/two/b")
        assert browser_pid(pool, d1) != browser_pid(other, d2)
        ports = [
            port
            for stats in (pool.stats(), other.stats())
            for inst in stats.instances
            for port in (inst.driver_port, inst.debug_port)
        ]
    assert None not in ports
    assert len(ports) == len(set(ports)), "no port is shared"
    released = other.stats()
    assert released.closed


def test_close_leaves_no_process_behind(paths: ChromePaths, server: PageServer) -> None:
    closing = ChromePool(pool_size=2, **paths)
    with closing.session("c1") as d1, closing.session("c2") as d2:
        d1.get(server.url("/close/1"))
        d2.get(server.url("/close/2"))
        profiles = [
            a.split("=", 1)[1]
            for d in (d1, d2)
            for a in psutil.Process(browser_pid(closing, d)).cmdline()
            if a.startswith("--user-data-dir=")
        ]
    stats = closing.stats()
    assert stats.size == 2
    procs = pool_processes(stats)
    assert len(procs) >= 6, "chromedriver, browser and children for two instances"
    driver_pids = [i.driver_pid for i in stats.instances]
    closing.close()
    closing.close()  # idempotent
    leftovers = [p for p in procs if running(p)]
    assert leftovers == []
    for pid in driver_pids:  # our own children are reaped, not zombies
        assert pid is not None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).ppid() != os.getpid()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or ())
        assert not any(p in cmdline for p in profiles) or not running(proc)
    assert not any(os.path.exists(p) for p in profiles), "profiles removed"
    with pytest.raises(ClosedError):
        closing.acquire("late")
    assert closing.stats().closed


def test_closing_while_a_task_holds_a_driver(paths: ChromePaths) -> None:
    closing = ChromePool(pool_size=1, **paths)
    driver = closing.acquire("held")
    procs = pool_processes(closing.stats())
    closing.close()
    assert not any(running(p) for p in procs)
    closing.release("held", driver)  # a no-op after close


def test_atexit_closes_a_pool_the_host_forgot(paths: ChromePaths, server: PageServer) -> None:
    script = f"""
import json
from leadperf.pool import ChromePool
pool = ChromePool(pool_size=1, **{paths!r})
driver = pool.acquire("forgotten")
driver.get({server.url("/forgotten")!r})
inst = pool.stats().instances[0]
print(json.dumps([inst.driver_pid, inst.browser_pid]), flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert server.cookies_for("/forgotten") == [None], "the child really drove Chrome"
    for pid in pids:
        assert not psutil.pid_exists(pid) or not running(psutil.Process(pid))


# -- async -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_session_async_keeps_the_event_loop_free(
    paths: ChromePaths, server: PageServer
) -> None:
    async with ChromePool(pool_size=2, **paths) as apool:
        gaps: list[float] = []
        done = anyio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        titles: dict[str, str] = {}

        async def task(name: str) -> None:
            async with apool.session_async(name) as driver:
                await anyio.to_thread.run_sync(driver.get, server.url(f"/async/{name}"))
                titles[name] = await anyio.to_thread.run_sync(lambda: driver.title)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with anyio.create_task_group() as workers:
                for name in ("x", "y", "z"):
                    workers.start_soon(task, name)
            done.set()
        assert titles == {"x": "/async/x", "y": "/async/y", "z": "/async/z"}
        stats = apool.stats()
        # Two cold starts and three tab resets ran meanwhile. Run on the loop, a cold start
        # would stall it for its whole duration; in threads, the ticks keep coming.
        slowest_acquire = stats.acquire_p95_ms / 1000
        assert slowest_acquire > 0.3, "the cold starts were measured"
        assert max(gaps) < 0.6 * slowest_acquire
        assert stats.created == 2
        assert stats.tasks == 3

        async with apool.session_async("h1"), apool.session_async("h2"):
            with pytest.raises(PoolExhaustedError):
                await apool.session_async("h3", timeout=0.2).__aenter__()
        assert apool.stats().in_use == 0
    assert apool.closed


# -- remote (Selenium Grid protocol) -------------------------------------------------------------


def test_remote_url_drives_a_remote_webdriver_end(
    chrome_paths: tuple[str, str], server: PageServer
) -> None:
    """A standalone chromedriver speaks the same W3C protocol a Selenium Grid does."""
    port = reserve_port()
    remote = subprocess.Popen(
        [chrome_paths[1], f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: _listening(port), timeout=10)
        with ChromePool(
            pool_size=1, remote_url=f"http://127.0.0.1:{port}", chrome_binary=chrome_paths[0]
        ) as grid:
            for n in range(2):
                with grid.session(f"remote-{n}") as driver:
                    driver.get(server.url(f"/remote/{n}/set"))
                    assert driver.title == f"/remote/{n}/set"
            inst = grid.stats().instances[0]
            assert (inst.driver_pid, inst.browser_pid, inst.tasks) == (None, None, 2)
            assert server.cookies_for("/remote/1/set") == [None]
            children = psutil.Process(remote.pid).children(recursive=True)
            assert children, "the remote end started Chrome"
        assert wait_for(lambda: not any(running(p) for p in children)), "session ended"
    finally:
        os.killpg(remote.pid, signal.SIGKILL)
        remote.wait()
        release_port(port)


def _listening(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


# -- configuration and the default pool -----------------------------------------------------------


def test_settings_and_bad_arguments(tmp_env: pytest.MonkeyPatch, paths: ChromePaths) -> None:
    tmp_env.setenv("CHROME_POOL_SIZE", "3")
    tmp_env.setenv("CHROME_IDLE_TIMEOUT", "12.5")
    with ChromePool(**paths) as from_env:
        assert (from_env.pool_size, from_env.idle_timeout, from_env.headless) == (3, 12.5, True)
        assert from_env.stats().max_size == 3
    with ChromePool(pool_size=1, **paths) as explicit:
        assert explicit.pool_size == 1
    for bad in (
        {"pool_size": 0},
        {"idle_timeout": -1},
        {"max_tasks_per_instance": 0},
        {"isolation": "window"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ChromePool(**bad, **paths)
    with pytest.raises(ConfigError, match="user-data-dir"):
        ChromePool(options=["--user-data-dir=/tmp/x"], **paths)
    with pytest.raises(ConfigError, match="driver_path"):
        ChromePool(driver_path="/nonexistent/chromedriver", chrome_binary=paths["chrome_binary"])
    remote = ChromePool(remote_url="http://user:secret@127.0.0.1:4444/wd/hub")
    assert "secret" not in repr(remote)
    remote.close()


def test_get_chrome_pool_is_process_wide(tmp_env: pytest.MonkeyPatch) -> None:
    first = get_chrome_pool()
    assert get_chrome_pool() is first
    first.close()
    second = get_chrome_pool()
    assert second is not first
    assert not second.closed
    second.close()


# -- screenshots -----------------------------------------------------------------------------------


def test_screenshot_comes_back_small(pool: ChromePool, server: PageServer) -> None:
    pytest.importorskip("leadperf.optimize.resources")
    with pool.session("shot") as driver:
        driver.set_window_size(1280, 2000)
        driver.get(server.url("/shot"))
        png = driver.get_screenshot_as_png()
        small = pool.screenshot(driver, target_size_kb=20)
    assert small[:3] == b"\xff\xd8\xff", "a JPEG"
    assert len(small) <= 20 * 1024
    assert png[:4] == b"\x89PNG"


def test_user_disable_features_are_merged_with_the_pools() -> None:
    pytest.importorskip("selenium")
    from selenium import webdriver

    from leadperf._chrome.options import build_options

    base = webdriver.ChromeOptions()
    base.add_argument("--disable-features=Translate")
    opts = build_options(base, headless=True, binary=None, extra=())
    disabled = [a for a in opts.arguments if a.startswith("--disable-features=")]
    assert len(disabled) == 1
    assert disabled[0].split("=", 1)[1].split(",") == [*DISABLED_FEATURES, "Translate"]


def test_a_temp_dir_too_long_for_chromes_socket(
    paths: ChromePaths, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Chrome's singleton socket lives in the instance's TMPDIR and must fit 107 bytes."""
    import tempfile

    long_dir = tmp_path / ("x" * 60) / ("y" * 60)
    long_dir.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    with ChromePool(pool_size=1, **paths) as pool, pool.session("long") as driver:
        driver.get("data:text/html,<title>long</title>")
        assert driver.title == "long"
        profile = next(
            a.split("=", 1)[1]
            for a in psutil.Process(browser_pid(pool, driver)).cmdline()
            if a.startswith("--user-data-dir=")
        )
        assert not profile.startswith(str(long_dir)), "moved to a short temp dir"
    assert not os.path.exists(profile)
    assert list(long_dir.iterdir()) == []


def test_nothing_left_running_after_close(paths: ChromePaths, server: PageServer) -> None:
    """Once every pool closed, the host has no child process and no pool thread left."""
    script = f"""
import json, os, threading, psutil
from leadperf.pool import ChromePool
me = psutil.Process()
pool = ChromePool(pool_size=1, **{paths!r})
with pool.session("one") as driver:
    driver.get({server.url("/closing-all")!r})
running = [p.name() for p in me.children()]
threads_open = sorted(t.name for t in threading.enumerate())
pool.close()
print(json.dumps({{
    "while_open": running,
    "threads_open": threads_open,
    "children": [p.pid for p in me.children()],
    "threads": sorted(t.name for t in threading.enumerate()),
}}), flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "chromedriver" in seen["while_open"], "chromedriver ran as the host's child"
    assert any("python" in name for name in seen["while_open"]), "and the watchdog"
    assert "leadperf-chrome-launcher" in seen["threads_open"]
    assert seen["children"] == [], "watchdog and chromedriver gone after close"
    assert seen["threads"] == ["MainThread"], "launcher and housekeeping threads ended"
