"""One pooled Chrome: its chromedriver and browser processes, a browser-level DevTools link,
the ready tab handed to the next task, health checks, memory sampling and teardown.

Local instances run chromedriver in a session of its own (so its process group holds
Chrome and every process Chrome forks), with a fresh ``--user-data-dir`` that also appears
in the command line of every Chrome process, crashpad included. Teardown kills the group,
then sweeps any process still naming that directory, so nothing the instance started
survives it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil

from ._chrome_ports import release_port, reserve_port
from ._util import mask_url, require
from .errors import BrowserStartError

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = [
    "DEFAULT_ISOLATION",
    "ISOLATION_MODES",
    "REQUIRED_FLAGS",
    "SHARED_RENDERER_FLAGS",
    "ChromeInstance",
    "InstanceBroken",
    "build_options",
    "chrome_flags",
]

#: How tasks are kept apart: a fresh browser context each, or a fresh tab in one shared,
#: cleared context.
ISOLATION_MODES: tuple[str, ...] = ("context", "tab")
#: The mode a pool uses unless told otherwise: a new tab per task in the instance's one
#: off-the-record context, cleared on release. It costs about 40 % less CPU per task than
#: "context" (docs/perf/pool.md); docs/pool.md says what it shares.
DEFAULT_ISOLATION = "tab"

#: Flags every pooled Chrome starts with (``--headless=new`` in front when headless).
REQUIRED_FLAGS: tuple[str, ...] = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
_OWNED_FLAGS = ("--user-data-dir", "--remote-debugging-port")
#: Chrome features the pool turns off. Each new browser context otherwise starts an extra
#: renderer for the omnibox popup, which a headless tab never shows; measured here, it
#: doubled the time to hand a fresh context to the next task.
DISABLED_FEATURES: tuple[str, ...] = ("WebUIOmniboxPopup", "WebUIOmniboxAimPopup")
#: Added for ``isolation="tab"``: one renderer process serves every tab of the instance
#: (site isolation off, at most one renderer), so a task's new tab and its first page do
#: not each start a renderer process. Measured here, that is most of what a tab costs.
#: Context mode cannot share renderers between contexts, so it keeps Chrome's defaults.
SHARED_RENDERER_FLAGS: tuple[str, ...] = (
    "--renderer-process-limit=1",
    "--disable-site-isolation-trials",
)
_DISABLE_FEATURES = "--disable-features="
#: What a tab-mode reset clears, sent from a session of the new tab: cookies, storage of
#: every origin, the HTTP cache (all for the tab's browser context).
_CLEAR_STATE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Network.clearBrowserCookies", {}),
    ("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"}),
    ("Network.clearBrowserCache", {}),
)


class InstanceBroken(Exception):
    """The instance died or stopped answering; it must be killed and replaced."""


class _NotYet(InstanceBroken):
    """A state chromedriver has not caught up with yet; raised for good once waited out."""


def chrome_flags(headless: bool, isolation: str = DEFAULT_ISOLATION) -> list[str]:
    """Chrome command-line flags for a pooled instance (``--no-sandbox`` only as root)."""
    flags = ["--headless=new"] if headless else []
    flags.extend(REQUIRED_FLAGS)
    if isolation == "tab":
        flags.extend(SHARED_RENDERER_FLAGS)
    # Chrome refuses to start as root with its sandbox on; elsewhere keep the sandbox.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def build_options(
    base: Any,
    *,
    headless: bool,
    binary: str | None,
    extra: Sequence[str],
    isolation: str = DEFAULT_ISOLATION,
) -> Any:
    """A fresh ``ChromeOptions``: the user's base options plus the pool's flags."""
    webdriver = require("selenium.webdriver", "chrome", "selenium")
    if base is None:
        opts = webdriver.ChromeOptions()
    elif isinstance(base, list | tuple):
        opts = webdriver.ChromeOptions()
        for arg in base:
            opts.add_argument(str(arg))
    else:
        opts = copy.deepcopy(base)
    for flag in [*chrome_flags(headless, isolation), *extra]:
        if flag not in opts.arguments:
            opts.add_argument(flag)
    # Chrome honours only one --disable-features: merge the user's list with the pool's.
    features = list(DISABLED_FEATURES)
    for arg in [a for a in opts.arguments if a.startswith(_DISABLE_FEATURES)]:
        opts.arguments.remove(arg)
        features.extend(f for f in arg[len(_DISABLE_FEATURES) :].split(",") if f)
    opts.add_argument(_DISABLE_FEATURES + ",".join(dict.fromkeys(features)))
    if binary and not opts.binary_location:
        opts.binary_location = binary
    return opts


def owned_flag_in(base: Any) -> str | None:
    """The first flag in ``base`` options that the pool must own itself, if any."""
    if base is None:
        return None
    args = list(base) if isinstance(base, list | tuple) else list(getattr(base, "arguments", []))
    for arg in args:
        for owned in _OWNED_FLAGS:
            if str(arg).startswith(owned):
                return owned
    return None


class _DevTools:
    """A blocking browser-level DevTools (CDP) connection over a WebSocket."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        websocket = require("websocket", "chrome", "websocket-client")
        self._ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call_many([(method, params)])[0]

    def call_many(
        self, commands: Sequence[tuple[str, dict[str, Any]]], session_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Send every command at once, then collect the replies (in command order).

        The browser works on them concurrently (a renderer starting for one, a context
        being torn down for another), which a call-then-wait sequence would serialize.
        With ``session_id`` the commands go to that attached target (a tab) instead of
        the browser.
        """
        ids: dict[int, int] = {}
        for index, (method, params) in enumerate(commands):
            self._next_id += 1
            ids[self._next_id] = index
            message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
            if session_id is not None:
                message["sessionId"] = session_id
            self._ws.send(json.dumps(message))
        results: list[dict[str, Any] | None] = [None] * len(commands)
        pending = len(commands)
        while pending:
            reply = json.loads(self._ws.recv())
            found = ids.get(reply.get("id", -1))
            if found is None:
                continue  # an event or a late reply: not ours
            index = found
            if "error" in reply:
                raise InstanceBroken(f"DevTools {commands[index][0]} failed: {reply['error']}")
            results[index] = reply.get("result", {})
            pending -= 1
        return [r if r is not None else {} for r in results]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


def _devtools_url(http_address: str, timeout: float) -> str:
    with urllib.request.urlopen(f"http://{http_address}/json/version", timeout=timeout) as resp:
        url: str = json.load(resp)["webSocketDebuggerUrl"]
    return url


class ChromeInstance:
    """One browser (local processes or a remote WebDriver session) lent to one task at a time."""

    def __init__(
        self,
        *,
        number: int,
        driver: WebDriver,
        process: subprocess.Popen[bytes] | None,
        user_data_dir: str | None,
        driver_port: int | None,
        debug_port: int | None,
        devtools_url: str | None,
        op_timeout: float,
        isolation: str = DEFAULT_ISOLATION,
    ) -> None:
        self.number = number
        self.isolation = isolation
        self.driver = driver
        self.process = process
        self.user_data_dir = user_data_dir
        self.driver_port = driver_port
        self.debug_port = debug_port
        self.op_timeout = op_timeout
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.tasks = 0
        self.busy = False
        self.handle: str | None = None
        self.rss_mb: float | None = None
        self.pss_mb: float | None = None
        self.uss_mb: float | None = None
        self.memory_sampled_at = 0.0
        self.verified_at = 0.0
        self._context: str | None = None
        self._hung = False
        self._closed = False
        self._kill_lock = threading.Lock()
        self.browser: psutil.Process | None = None
        if process is not None and user_data_dir is not None:
            self.browser = _find_browser(process.pid, user_data_dir)
        self._baseline: dict[str, Any] = driver.execute("getTimeouts")["value"]
        self._devtools: _DevTools | None = None
        if devtools_url is not None:
            try:
                self._devtools = _DevTools(devtools_url, op_timeout)
            except Exception:  # DevTools unreachable: fall back to per-tab clearing
                self._devtools = None

    @property
    def remote(self) -> bool:
        return self.process is None

    @property
    def isolates_contexts(self) -> bool:
        """True when each task gets a fresh browser context (else: a new tab, cleared)."""
        return self._devtools is not None and self.isolation == "context"

    @property
    def browser_pid(self) -> int | None:
        return self.browser.pid if self.browser is not None else None

    @property
    def driver_pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

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
        service_mod = require("selenium.webdriver.chrome.service", "chrome", "selenium")
        user_data_dir = tempfile.mkdtemp(prefix="leadperf-chrome-")
        driver_port = reserve_port()
        debug_port = reserve_port()
        options = build_options(
            base_options,
            headless=headless,
            binary=chrome_binary,
            extra=[f"--user-data-dir={user_data_dir}", f"--remote-debugging-port={debug_port}"],
            isolation=isolation,
        )
        env = dict(os.environ)
        # Crashpad's handler double-forks away from Chrome; pointing its database into the
        # profile puts the profile path on its command line, so teardown finds it too.
        env["BREAKPAD_DUMP_LOCATION"] = os.path.join(user_data_dir, "crash")
        popen_kw: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}
        service = service_mod.Service(
            executable_path=driver_path, port=driver_port, env=env, popen_kw=popen_kw
        )
        timer = threading.Timer(start_timeout, _kill_service, (service,))
        timer.daemon = True
        timer.start()
        try:
            driver = webdriver.Chrome(options=options, service=service)
        except Exception as exc:
            timer.cancel()
            process = getattr(service, "process", None)
            _teardown(process, user_data_dir)
            release_port(driver_port)
            release_port(debug_port)
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
                process=service.process,
                user_data_dir=user_data_dir,
                driver_port=driver_port,
                debug_port=debug_port,
                devtools_url=_devtools_url(f"127.0.0.1:{debug_port}", op_timeout),
                op_timeout=op_timeout,
                isolation=isolation,
            )
            instance.prepare_tab()
        except Exception as exc:
            _teardown(service.process, user_data_dir)
            release_port(driver_port)
            release_port(debug_port)
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
        devtools_url: str | None = None
        caps = driver.capabilities
        try:
            if caps.get("se:cdp"):
                devtools_url = str(caps["se:cdp"])
            elif (caps.get("goog:chromeOptions") or {}).get("debuggerAddress"):
                address = caps["goog:chromeOptions"]["debuggerAddress"]
                devtools_url = _devtools_url(address, op_timeout)
        except Exception:  # DevTools not reachable from here: tab isolation only
            devtools_url = None
        try:
            instance = cls(
                number=number,
                driver=driver,
                process=None,
                user_data_dir=None,
                driver_port=None,
                debug_port=None,
                devtools_url=devtools_url,
                op_timeout=op_timeout,
                isolation=isolation,
            )
            instance.prepare_tab()
        except Exception as exc:
            with contextlib.suppress(Exception):
                driver.quit()
            raise BrowserStartError(f"remote Chrome session did not answer: {exc}") from exc
        return instance

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
        if self.process is None:
            return True
        if self.process.poll() is not None or self.browser is None:
            return False
        try:
            return self.browser.is_running() and self.browser.status() != psutil.STATUS_ZOMBIE
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

    # -- tabs -------------------------------------------------------------------------------

    def prepare_tab(self) -> None:
        """Open the next task's blank tab, close everything the last task left, reset state."""
        with self.deadline("resetting the tab"):
            if self._devtools is None:
                self._rotate_tab()
            elif self.isolation == "context":
                self._rotate_context(self._devtools)
            else:
                self._rotate_shared_tab(self._devtools)
            # Timeouts belong to the WebDriver session, not the tab: undo the last task's.
            if self.driver.execute("getTimeouts")["value"] != self._baseline:
                self.driver.execute("setTimeouts", dict(self._baseline))
        self.verified_at = time.monotonic()

    def _rotate_context(self, devtools: _DevTools) -> None:
        # A fresh browser context per task: its cookies, storage, cache and service workers
        # are its own, and disposing it wipes them (like an incognito window).
        context = devtools.call("Target.createBrowserContext", disposeOnDetach=True)
        context_id = context["browserContextId"]
        old_context = self._context
        commands: list[tuple[str, dict[str, Any]]] = [
            ("Target.createTarget", {"url": "about:blank", "browserContextId": context_id}),
            ("Target.getTargets", {}),
        ]
        if old_context is not None:
            # Waited for below, so the last task's data is gone when release() returns.
            commands.append(("Target.disposeBrowserContext", {"browserContextId": old_context}))
        replies = devtools.call_many(commands)
        handle = replies[0]["targetId"]
        strays = [
            info
            for info in _pages(replies[1])
            if info.get("browserContextId") not in (context_id, old_context)
        ]
        self._clear_strays(devtools, strays)
        self._switch_to_new(handle)
        self._context, self.handle = context_id, handle
        self._close_targets(devtools, [info["targetId"] for info in strays])
        self._await_only(handle)

    def _rotate_shared_tab(self, devtools: _DevTools) -> None:
        # One off-the-record browser context for the instance's life (in memory, no history):
        # a new tab in it per task, every other tab closed (the last task's and any it
        # opened), then the context's cookies, storage and HTTP cache cleared. With the
        # shared-renderer flags the new tab reuses the instance's renderer process. Cheaper
        # than a context per task; see docs/pool.md for what stays shared.
        if self._context is None:
            created = devtools.call("Target.createBrowserContext", disposeOnDetach=True)
            self._context = created["browserContextId"]
        context_id = self._context
        created, targets = devtools.call_many(
            [
                ("Target.createTarget", {"url": "about:blank", "browserContextId": context_id}),
                ("Target.getTargets", {}),
            ]
        )
        handle = created["targetId"]
        pages = [info for info in _pages(targets) if info["targetId"] != handle]
        ours = [info["targetId"] for info in pages if info.get("browserContextId") == context_id]
        strays = [info for info in pages if info.get("browserContextId") != context_id]
        # The last task's tabs close before the clearing, so none of its pages writes
        # anything afterwards; windows in Chrome's default context are cleared first.
        closing = ours + [info["targetId"] for info in strays]
        if not self._clear_strays(devtools, strays):
            # Closing before the switch lets chromedriver take in the closed tabs while it
            # attaches to the new one (about 2 ms off a reset's p50 of 45 ms). After clearing
            # strays chromedriver is on one of them, so it must switch first.
            self._close_targets(devtools, closing)
            closing = []
        self._switch_to_new(handle)
        self._close_targets(devtools, closing)
        self.handle = handle
        self._await_only(handle)
        if self.tasks:
            # From a DevTools session of the new tab on the browser link: three pipelined
            # commands cost about a third of the same through chromedriver. The session
            # ends when the tab closes. A failure fails the reset, so the instance is
            # replaced rather than lent with the last task's data.
            session = devtools.call("Target.attachToTarget", targetId=handle, flatten=True)
            devtools.call_many(_CLEAR_STATE, session_id=session["sessionId"])

    def _await_only(self, handle: str) -> None:
        """Wait until chromedriver lists ``handle`` as the only window.

        Target.closeTarget and disposeBrowserContext answer before the tabs are gone, and
        chromedriver drops a tab from window_handles only when its own event arrives; the
        next task must never see the last task's windows.
        """

        def only_handle() -> None:
            handles = self.driver.window_handles
            if handle not in handles:
                raise InstanceBroken("the ready tab is gone")
            if handles != [handle]:
                raise _NotYet("the last task's tabs did not close")

        self._retry(only_handle, _NotYet)

    def _retry(self, attempt: Callable[[], None], retry_on: type[Exception]) -> None:
        """Call ``attempt`` until it stops raising ``retry_on``, backing off from 5 ms.

        For what chromedriver learns from its own DevTools events a few milliseconds
        after the browser answered. Past half of ``op_timeout`` the last error is raised.
        """
        delay = 0.005
        give_up = time.monotonic() + self.op_timeout / 2
        while True:
            try:
                attempt()
                return
            except retry_on:
                if time.monotonic() + delay > give_up:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _clear_strays(self, devtools: _DevTools, strays: list[dict[str, Any]]) -> bool:
        """Clear what windows in Chrome's default context hold; True if any was touched.

        Windows opened with ``driver.switch_to.new_window()`` live in the default context,
        which is never disposed: clear its cookies, and from each such window's own page
        session the storage of the origin it shows. The caller closes them afterwards.
        """
        web_strays = [info for info in strays if _origin(info.get("url", ""))]
        if not (self.tasks and web_strays):
            return False
        devtools.call("Storage.clearCookies")  # the default context's cookies
        for info in web_strays:
            # Storage can only be cleared from a page session; a window that closed itself
            # meanwhile is simply gone.
            with contextlib.suppress(Exception):
                self.driver.switch_to.window(info["targetId"])
                self.driver.execute_cdp_cmd(
                    "Storage.clearDataForOrigin",
                    {"origin": _origin(info["url"]), "storageTypes": "all"},
                )
        return True

    @staticmethod
    def _close_targets(devtools: _DevTools, target_ids: list[str]) -> None:
        if target_ids:
            with contextlib.suppress(InstanceBroken):  # a tab may have closed itself
                devtools.call_many([("Target.closeTarget", {"targetId": t}) for t in target_ids])

    def _clear_shared_state(self, origin: str | None = None) -> None:
        """Clear cookies, storage of every origin and the HTTP cache from the current tab."""
        driver = self.driver
        (cookies, cookie_params), *rest = _CLEAR_STATE
        try:
            driver.execute_cdp_cmd(cookies, cookie_params)
        except Exception:  # no CDP at all: WebDriver's own cookie call
            driver.delete_all_cookies()
            return
        # A failure past this point fails the reset, so the instance is replaced rather
        # than lent with the last task's data.
        if origin:
            driver.execute_cdp_cmd(
                "Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"}
            )
        for method, params in rest:
            driver.execute_cdp_cmd(method, params)

    def _switch_to_new(self, handle: str) -> None:
        # chromedriver may not know the tab the browser just created yet: retry briefly.
        self._retry(lambda: self.driver.switch_to.window(handle), Exception)

    def _rotate_tab(self) -> None:
        # Without a browser-level DevTools link: a new tab, the others closed, and the
        # cookies and storage Chrome lets a page session clear.
        driver = self.driver
        origin = None
        if self.tasks:
            with contextlib.suppress(Exception):
                origin = _origin(str(driver.execute_script("return location.href")))
        driver.switch_to.new_window("tab")
        handle = driver.current_window_handle
        for other in driver.window_handles:
            if other != handle:
                driver.switch_to.window(other)
                driver.close()
        driver.switch_to.window(handle)
        self.handle = handle
        if self.tasks:
            self._clear_shared_state(origin)

    # -- memory -----------------------------------------------------------------------------

    def sample_memory(self) -> None:
        """Measure the process tree: summed RSS, PSS (shared pages split) and USS, in MB."""
        if self.process is None:
            return
        try:
            procs = [psutil.Process(self.process.pid)]
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
        with self._kill_lock:
            _teardown(self.process, self.user_data_dir, remove_dir=False)

    def close(self) -> None:
        """End the session and everything it started. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._devtools is not None:
            self._devtools.close()
        if self.process is None:
            with contextlib.suppress(Exception):
                self.driver.quit()
        else:
            self.kill_processes()
            with contextlib.suppress(Exception):
                getattr(self.driver, "service").stop()  # noqa: B009 - local drivers only
            with contextlib.suppress(Exception):
                getattr(self.driver.command_executor, "close")()  # noqa: B009
            if self.user_data_dir:
                shutil.rmtree(self.user_data_dir, ignore_errors=True)
            release_port(self.driver_port)
            release_port(self.debug_port)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _pages(targets: dict[str, Any]) -> list[dict[str, Any]]:
    return [info for info in targets["targetInfos"] if info.get("type") == "page"]


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def _find_browser(driver_pid: int, user_data_dir: str) -> psutil.Process | None:
    try:
        for child in psutil.Process(driver_pid).children():
            if any(user_data_dir in arg for arg in child.cmdline()):
                return child
    except psutil.Error:
        return None
    return None


def _kill_service(service: Any) -> None:
    process = getattr(service, "process", None)
    if process is not None:
        _teardown(process, None, remove_dir=False)


def _teardown(
    process: subprocess.Popen[bytes] | None, user_data_dir: str | None, *, remove_dir: bool = True
) -> None:
    killed: list[psutil.Process] = []
    if process is not None and process.poll() is None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(process.pid)
            killed = [root, *root.children(recursive=True)]
        # The group id is chromedriver's pid, which cannot be reused before we reap it.
        with contextlib.suppress(OSError):
            if os.name == "posix":
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
    if user_data_dir:
        # Anything that left the group (a crashpad handler, a reparented child) still
        # names the profile directory on its command line.
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or ()
            if any(user_data_dir in arg for arg in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    killed.append(proc)
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            process.wait(timeout=10)
    # SIGKILL is delivered at once but a process takes a moment to exit (freeing its
    # memory, finishing a disk write): return only when every one of them is gone.
    deadline = time.monotonic() + 10
    while any(_alive(proc) for proc in killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    if remove_dir and user_data_dir:
        shutil.rmtree(user_data_dir, ignore_errors=True)


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds nothing; its parent or init reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
