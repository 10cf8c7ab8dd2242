"""One pooled Chrome: its driver, its processes (local) or session (remote), its DevTools link,
the isolation strategy that readies each task's tab, health checks, memory and teardown.

What a pool tracks about lending (busy, tasks served, last use) is the pool's, not here.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil

from .._util import mask_url, require
from ..errors import BrowserStartError
from .devtools import DevTools, InstanceBroken, devtools_url
from .isolation import Isolation, isolation_for
from .options import DEFAULT_ISOLATION, build_options
from .process import LocalProcesses, kill_service, teardown

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from .config import PoolConfig

__all__ = ["ChromeInstance"]


class ChromeInstance:
    """One browser (local processes or a remote WebDriver session) lent to one task at a time."""

    def __init__(
        self,
        *,
        number: int,
        driver: WebDriver,
        local: LocalProcesses | None,
        devtools_url: str | None,
        op_timeout: float,
        isolation: str = DEFAULT_ISOLATION,
    ) -> None:
        self.number = number
        self.driver = driver
        self.local = local
        self.op_timeout = op_timeout
        self.created_at = time.monotonic()
        self.rss_mb: float | None = None
        self.pss_mb: float | None = None
        self.uss_mb: float | None = None
        self.memory_sampled_at = 0.0
        self.verified_at = 0.0
        self._hung = False
        self._closed = False
        if local is not None:
            local.find_browser()
        self._baseline: dict[str, Any] = driver.execute("getTimeouts")["value"]
        self._devtools: DevTools | None = None
        if devtools_url is not None:
            try:
                self._devtools = DevTools(devtools_url, op_timeout)
            except Exception:  # DevTools unreachable: fall back to per-tab clearing
                self._devtools = None
        self.isolation: Isolation = isolation_for(isolation, driver, self._devtools, op_timeout)

    @property
    def remote(self) -> bool:
        return self.local is None

    @property
    def isolates_contexts(self) -> bool:
        """True when each task gets a fresh browser context (else: a new tab, cleared)."""
        return self.isolation.isolates_contexts

    @property
    def browser(self) -> psutil.Process | None:
        return self.local.browser if self.local is not None else None

    @property
    def browser_pid(self) -> int | None:
        browser = self.browser
        return browser.pid if browser is not None else None

    @property
    def process(self) -> Any:
        """chromedriver's ``Popen`` (None for remote instances)."""
        return self.local.process if self.local is not None else None

    @property
    def driver_pid(self) -> int | None:
        process = self.process
        return int(process.pid) if process is not None else None

    @property
    def driver_port(self) -> int | None:
        return self.local.driver_port if self.local is not None else None

    @property
    def debug_port(self) -> int | None:
        return self.local.debug_port if self.local is not None else None

    @property
    def user_data_dir(self) -> str | None:
        return self.local.user_data_dir if self.local is not None else None

    @property
    def handle(self) -> str | None:
        """The ready (or lent) tab's window handle."""
        return self.isolation.handle

    # -- start ----------------------------------------------------------------------------

    @classmethod
    def start_local(
        cls,
        *,
        number: int,
        chrome_binary: str,
        driver_path: str,
        headless: bool,
        base_options: Any,
        start_timeout: float,
        op_timeout: float,
        isolation: str = DEFAULT_ISOLATION,
    ) -> ChromeInstance:
        """Start chromedriver and Chrome on freshly reserved ports; BrowserStartError if not."""
        webdriver = require("selenium.webdriver", "chrome", "selenium")
        local = LocalProcesses()
        options = build_options(
            base_options,
            headless=headless,
            binary=chrome_binary,
            extra=local.chrome_args(),
            isolation=isolation,
        )
        service = local.service(driver_path)
        timer = threading.Timer(start_timeout, kill_service, (service,))
        timer.daemon = True
        timer.start()
        try:
            driver = webdriver.Chrome(options=options, service=service)
        except Exception as exc:
            timer.cancel()
            local.remove()
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BrowserStartError(
                f"could not start Chrome ({chrome_binary}) with chromedriver ({driver_path}): "
                f"{first_line}. Check both are installed, of the same major version, and that "
                "the host has memory to spare"
            ) from exc
        timer.cancel()
        try:
            instance = cls(
                number=number,
                driver=driver,
                local=local,
                devtools_url=devtools_url(f"127.0.0.1:{local.debug_port}", op_timeout),
                op_timeout=op_timeout,
                isolation=isolation,
            )
            instance.prepare_tab(clear=False)
        except Exception as exc:
            local.remove()
            raise BrowserStartError(f"Chrome started but did not answer: {exc}") from exc
        return instance

    @classmethod
    def start_remote(
        cls,
        *,
        number: int,
        remote_url: str,
        chrome_binary: str | None,
        headless: bool,
        base_options: Any,
        op_timeout: float,
        isolation: str = DEFAULT_ISOLATION,
    ) -> ChromeInstance:
        """Open a session on a Selenium Grid (or any remote WebDriver end) at ``remote_url``."""
        webdriver = require("selenium.webdriver", "chrome", "selenium")
        conn_mod = require("selenium.webdriver.chromium.remote_connection", "chrome", "selenium")
        options = build_options(
            base_options, headless=headless, binary=chrome_binary, extra=(), isolation=isolation
        )
        # The Chromium connection adds the vendor CDP command, which the Grid forwards.
        executor = conn_mod.ChromiumRemoteConnection(
            remote_server_addr=remote_url, vendor_prefix="goog", browser_name="chrome"
        )
        try:
            driver = webdriver.Remote(command_executor=executor, options=options)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BrowserStartError(
                f"could not open a Chrome session at {mask_url(remote_url)}: {first_line}. "
                "Check the grid is reachable and has a free Chrome slot"
            ) from exc
        try:
            instance = cls(
                number=number,
                driver=driver,
                local=None,
                devtools_url=_remote_devtools_url(driver.capabilities, op_timeout),
                op_timeout=op_timeout,
                isolation=isolation,
            )
            instance.prepare_tab(clear=False)
        except Exception as exc:
            with contextlib.suppress(Exception):
                driver.quit()
            raise BrowserStartError(f"remote Chrome session did not answer: {exc}") from exc
        return instance

    @classmethod
    def start(cls, config: PoolConfig, number: int) -> ChromeInstance:
        """Start a local instance, or open a remote session when ``config.remote_url`` is set."""
        if config.remote_url is not None:
            return cls.start_remote(
                number=number,
                remote_url=config.remote_url,
                chrome_binary=config.chrome_binary,
                headless=config.headless,
                base_options=config.options,
                op_timeout=config.op_timeout,
                isolation=config.isolation,
            )
        assert config.chrome_binary is not None
        assert config.driver_path is not None
        return cls.start_local(
            number=number,
            chrome_binary=config.chrome_binary,
            driver_path=config.driver_path,
            headless=config.headless,
            base_options=config.options,
            start_timeout=config.start_timeout,
            op_timeout=config.op_timeout,
            isolation=config.isolation,
        )

    # -- health -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def deadline(self, what: str, seconds: float | None = None) -> Iterator[None]:
        """Kill the instance if the block runs longer than ``seconds``: a hung browser."""
        limit = self.op_timeout if seconds is None else seconds
        timer = threading.Timer(limit, self._on_hang)
        timer.daemon = True
        timer.start()
        try:
            yield
        except InstanceBroken:
            raise
        except Exception as exc:
            raise InstanceBroken(f"{what} failed: {_first_line(exc)}") from exc
        finally:
            timer.cancel()
        if self._hung:
            raise InstanceBroken(f"{what} took longer than {limit:g}s; the browser hung")

    def _on_hang(self) -> None:
        self._hung = True
        self.kill_processes()

    def processes_alive(self) -> bool:
        """Cheap check (no browser round trip) that chromedriver and Chrome still run."""
        if self._hung or self._closed:
            return False
        local = self.local
        if local is None:
            return True
        if local.process is None or local.process.poll() is not None or local.browser is None:
            return False
        try:
            return local.browser.is_running() and local.browser.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def check(self, fresh_for: float = 0.0) -> None:
        """Raise InstanceBroken unless the processes run and the browser answers.

        The browser round trip is skipped when the browser last answered less than
        ``fresh_for`` seconds ago (the tab reset on release just exercised it).
        """
        if not self.processes_alive():
            raise InstanceBroken("the browser or chromedriver process is gone")
        if time.monotonic() - self.verified_at < fresh_for:
            return
        with self.deadline("health check"):
            # chromedriver answers some commands from its own state; ask the browser.
            if self._devtools is not None:
                info = self._devtools.call("Target.getTargetInfo", targetId=self.handle)
                alive = info["targetInfo"]["targetId"] == self.handle
            else:
                alive = self.driver.title is not None
        if not alive:
            raise InstanceBroken("the ready tab is gone")
        self.verified_at = time.monotonic()

    def prepare_tab(self, clear: bool = True) -> None:
        """Ready the next task's blank tab through the isolation strategy; reset timeouts.

        ``clear`` is False only for a new instance's first tab (nothing to clear).
        """
        with self.deadline("resetting the tab"):
            self.isolation.reset(clear)
            # Timeouts belong to the WebDriver session, not the tab: undo the last task's.
            if self.driver.execute("getTimeouts")["value"] != self._baseline:
                self.driver.execute("setTimeouts", dict(self._baseline))
        self.verified_at = time.monotonic()

    # -- memory -----------------------------------------------------------------------------

    def sample_memory(self) -> None:
        """Measure the process tree: summed RSS, PSS (shared pages split) and USS, in MB."""
        process = self.process
        if process is None:
            return
        try:
            procs = [psutil.Process(process.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return
        rss = pss = uss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            uss += getattr(info, "uss", info.rss)
        mb = 1024 * 1024
        self.rss_mb, self.pss_mb, self.uss_mb = rss / mb, pss / mb, uss / mb
        self.memory_sampled_at = time.monotonic()

    # -- teardown ---------------------------------------------------------------------------

    def kill_processes(self) -> None:
        """SIGKILL chromedriver, Chrome and every process they forked; reap chromedriver."""
        if self.local is not None:
            self.local.kill()

    def kill_now(self) -> None:
        """Teardown for a signal handler: no locks (the interrupted code may hold them)."""
        local = self.local
        if local is None:
            with contextlib.suppress(Exception):
                self.driver.quit()  # ends the Grid session
            return
        self._closed = True
        # No port release and no word to the watchdog: both take locks the interrupted
        # code may hold. The watchdog sweeps a missing profile harmlessly at exit.
        teardown(local.process, local.user_data_dir, remove_dir=False, forget=False)
        shutil.rmtree(local.user_data_dir, ignore_errors=True)

    def close(self) -> None:
        """End the session and everything it started. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._devtools is not None:
            self._devtools.close()
        if self.local is None:
            with contextlib.suppress(Exception):
                self.driver.quit()
            return
        self.local.kill()
        with contextlib.suppress(Exception):
            getattr(self.driver, "service").stop()  # noqa: B009 - local drivers only
        with contextlib.suppress(Exception):
            getattr(self.driver.command_executor, "close")()  # noqa: B009
        self.local.remove_files()


def _remote_devtools_url(caps: dict[str, Any], op_timeout: float) -> str | None:
    """The DevTools endpoint a remote end exposes (a Grid's ``se:cdp``), if reachable."""
    try:
        if caps.get("se:cdp"):
            return str(caps["se:cdp"])
        address = (caps.get("goog:chromeOptions") or {}).get("debuggerAddress")
        if address:
            return devtools_url(address, op_timeout)
    except Exception:  # DevTools not reachable from here: tab isolation only
        return None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
