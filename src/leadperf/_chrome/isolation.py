"""How one instance keeps its tasks apart: one class per strategy behind :class:`Isolation`.

- :class:`SharedTabIsolation` (``isolation="tab"``, the default): one off-the-record
  browser context for the instance's life, a new tab in it per task, its cookies, storage
  and HTTP cache cleared between tasks.
- :class:`ContextIsolation` (``isolation="context"``): a fresh browser context per task,
  disposed with everything in it when the next task's context is ready.
- :class:`FreshTabIsolation`: used whatever the mode when the browser's DevTools endpoint
  is out of reach (some remote ends): a fresh tab through WebDriver alone, the others
  closed, and what a page session can clear cleared.

Every strategy leaves chromedriver on exactly one window, the ready tab, when
:meth:`Isolation.reset` returns.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .devtools import DevTools, InstanceBroken, NotYet, origin_of, pages

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

__all__ = [
    "ContextIsolation",
    "FreshTabIsolation",
    "Isolation",
    "SharedTabIsolation",
    "isolation_for",
]

#: What a tab-mode reset clears, sent from a session of the new tab: cookies, storage of
#: every origin, the HTTP cache (all for the tab's browser context).
CLEAR_STATE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Network.clearBrowserCookies", {}),
    ("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"}),
    ("Network.clearBrowserCache", {}),
)


class Isolation:
    """The seam: ``reset(clear)`` readies a blank tab for the next task.

    ``clear`` is False for an instance's first tab (nothing to clear yet). ``handle`` is the
    ready tab's window handle (its DevTools target id). Subclasses share the helpers below
    for what chromedriver learns a few milliseconds after the browser acted.
    """

    #: True when each task gets a browser context of its own.
    isolates_contexts = False

    def __init__(self, driver: WebDriver, devtools: DevTools | None, op_timeout: float) -> None:
        self.driver = driver
        self.devtools = devtools
        self.op_timeout = op_timeout
        self.handle: str | None = None

    def reset(self, clear: bool) -> None:
        """Open the next task's blank tab and close or clear what the last task left."""
        raise NotImplementedError

    def _retry(self, attempt: Callable[[], None], retry_on: type[Exception]) -> None:
        """Call ``attempt`` until it stops raising ``retry_on``, backing off from 5 ms.

        Past half of ``op_timeout`` the last error is raised.
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

    def _switch_to_new(self, handle: str) -> None:
        # chromedriver may not know the tab the browser just created yet: retry briefly.
        self._retry(lambda: self.driver.switch_to.window(handle), Exception)

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
                raise NotYet("the last task's tabs did not close")

        self._retry(only_handle, NotYet)

    @staticmethod
    def _close_targets(devtools: DevTools, target_ids: list[str]) -> None:
        if target_ids:
            with contextlib.suppress(InstanceBroken):  # a tab may have closed itself
                devtools.call_many([("Target.closeTarget", {"targetId": t}) for t in target_ids])

    def _clear_strays(self, devtools: DevTools, strays: list[dict[str, Any]], clear: bool) -> bool:
        """Clear what windows in Chrome's default context hold; True if any was touched.

        Windows opened with ``driver.switch_to.new_window()`` live in the default context,
        which is never disposed: clear its cookies, and from each such window's own page
        session the storage of the origin it shows. The caller closes them afterwards.
        """
        web_strays = [info for info in strays if origin_of(info.get("url", ""))]
        if not (clear and web_strays):
            return False
        devtools.call("Storage.clearCookies")  # the default context's cookies
        for info in web_strays:
            # Storage can only be cleared from a page session; a window that closed itself
            # meanwhile is simply gone.
            with contextlib.suppress(Exception):
                self.driver.switch_to.window(info["targetId"])
                self.driver.execute_cdp_cmd(
                    "Storage.clearDataForOrigin",
                    {"origin": origin_of(info["url"]), "storageTypes": "all"},
                )
        return True


class ContextIsolation(Isolation):
    """A fresh browser context per task: its cookies, storage, cache and service workers
    are its own, and disposing it wipes them (like an incognito window)."""

    isolates_contexts = True

    def __init__(self, driver: WebDriver, devtools: DevTools, op_timeout: float) -> None:
        super().__init__(driver, devtools, op_timeout)
        self._devtools = devtools
        self._context: str | None = None

    def reset(self, clear: bool) -> None:
        devtools = self._devtools
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
            for info in pages(replies[1])
            if info.get("browserContextId") not in (context_id, old_context)
        ]
        self._clear_strays(devtools, strays, clear)
        self._switch_to_new(handle)
        self._context, self.handle = context_id, handle
        self._close_targets(devtools, [info["targetId"] for info in strays])
        self._await_only(handle)


class SharedTabIsolation(Isolation):
    """One off-the-record browser context for the instance's life (in memory, no history):
    a new tab in it per task, every other tab closed, then the context's cookies, storage
    and HTTP cache cleared. With the shared-renderer flags the new tab reuses the
    instance's renderer process. Cheaper than a context per task; docs/pool.md says what
    stays shared."""

    def __init__(self, driver: WebDriver, devtools: DevTools, op_timeout: float) -> None:
        super().__init__(driver, devtools, op_timeout)
        self._devtools = devtools
        self._context: str | None = None

    def reset(self, clear: bool) -> None:
        devtools = self._devtools
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
        others = [info for info in pages(targets) if info["targetId"] != handle]
        ours = [info["targetId"] for info in others if info.get("browserContextId") == context_id]
        strays = [info for info in others if info.get("browserContextId") != context_id]
        # The last task's tabs close before the clearing, so none of its pages writes
        # anything afterwards; windows in Chrome's default context are cleared first.
        closing = ours + [info["targetId"] for info in strays]
        if not self._clear_strays(devtools, strays, clear):
            # Closing before the switch lets chromedriver take in the closed tabs while it
            # attaches to the new one (about 2 ms off a reset's p50 of 45 ms). After clearing
            # strays chromedriver is on one of them, so it must switch first.
            self._close_targets(devtools, closing)
            closing = []
        self._switch_to_new(handle)
        self._close_targets(devtools, closing)
        self.handle = handle
        self._await_only(handle)
        if clear:
            # From a DevTools session of the new tab on the browser link: three pipelined
            # commands cost about a third of the same through chromedriver. The session
            # ends when the tab closes. A failure fails the reset, so the instance is
            # replaced rather than lent with the last task's data.
            session = devtools.call("Target.attachToTarget", targetId=handle, flatten=True)
            devtools.call_many(CLEAR_STATE, session_id=session["sessionId"])


class FreshTabIsolation(Isolation):
    """Without a browser-level DevTools link: a new tab through WebDriver, the others
    closed, and the cookies, storage and cache a page session can clear."""

    def reset(self, clear: bool) -> None:
        driver = self.driver
        origin = None
        if clear:
            with contextlib.suppress(Exception):
                origin = origin_of(str(driver.execute_script("return location.href")))
        driver.switch_to.new_window("tab")
        handle = driver.current_window_handle
        for other in driver.window_handles:
            if other != handle:
                driver.switch_to.window(other)
                driver.close()
        driver.switch_to.window(handle)
        self.handle = handle
        if clear:
            self._clear_page_state(origin)

    def _clear_page_state(self, origin: str | None) -> None:
        """Clear cookies, storage of every origin and the HTTP cache from the current tab."""
        driver = self.driver
        (cookies, cookie_params), *rest = CLEAR_STATE
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


def isolation_for(
    mode: str, driver: WebDriver, devtools: DevTools | None, op_timeout: float
) -> Isolation:
    """The strategy for ``mode`` ("tab" or "context"), or the WebDriver-only one without
    a DevTools link."""
    if devtools is None:
        return FreshTabIsolation(driver, None, op_timeout)
    if mode == "context":
        return ContextIsolation(driver, devtools, op_timeout)
    return SharedTabIsolation(driver, devtools, op_timeout)
