"""The scraper's lifecycle: one engine, opened on one event loop, closed once.

The scraper remembers the asyncio loop its engine was opened on. Blocking ``*_sync``
calls from any other thread (a script's main thread beside leadperf's portal, a Jupyter
cell's loop) run on that loop; a blocking call from the loop's own thread would freeze it
and is refused. ``await`` on a scraper from another loop is refused up front with one
clear error, instead of failing deep inside with a cross-loop error.

The state is the shared :class:`~leadperf._core.lifecycle.AsyncResource` one: ``NEW``
while idle (no engine, or one borrowed by ``*_sync`` calls for their duration), ``OPEN``
once the engine is opened for the scraper's use, ``CLOSED`` for good. ``aclose()`` and
``close()`` are the same idempotent close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import anyio

from .._core.lifecycle import AsyncResource, BlockingContext, State
from .._portal import run_sync
from ..errors import ClosedError, ConfigError, LeadperfError
from ._engine import Engine, make_engine
from ._request import Limits

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Lifecycle", "Owner"]

Owner: TypeAlias = Literal["async", "portal"]
T = TypeVar("T")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()


class Lifecycle(BlockingContext, AsyncResource):
    """Open, enter, close and the blocking bridge, mixed into :class:`AsyncScraper`."""

    # Closing reaches background iterations and a borrowed engine even when never opened.
    _close_when_new = True

    engine_name: str
    max_connections: int
    timeout: float
    _engine_choice: str | None
    _headers: dict[str, str] | None
    _response_limits: Limits
    _proxy: str | None
    _trust_env: bool
    _cookies: bool
    _allow_private: bool
    _engine: Engine | None
    _loop: asyncio.AbstractEventLoop | None
    _owner: Owner | None
    _borrowers: int
    _borrowed: bool
    _tg: TaskGroup | None
    _tg_task: int
    _iterations: set[anyio.CancelScope]

    def _open_engine(self, owner: Owner, *, borrow: bool = False) -> Engine:
        self._check_open()
        if self._engine is None:
            loop = _running_loop()
            name = self.engine_name
            if loop is None and self._engine_choice is None and name == "aiohttp":
                name = self.engine_name = "httpx"  # the default under trio
            self._engine = make_engine(
                name,
                max_connections=self.max_connections,
                timeout=self.timeout,
                headers=self._headers,
                limits=self._response_limits,
                proxy=self._proxy,
                trust_env=self._trust_env,
                cookies=self._cookies,
                allow_private_networks=self._allow_private,
            )
            self._loop = loop
            self._owner = owner
        if not borrow and self._state is State.NEW:
            self._state = State.OPEN
            self._borrowed = False  # opened for good while borrowed: it stays open
        return self._engine

    async def _aopen(self) -> None:
        """``open()``: the engine on this loop (``async with`` also starts a task group)."""
        self._ensure_open()

    def _ensure_open(self) -> None:
        """Open the engine on this loop, or check an open one lives on this loop."""
        if self._engine is None:
            self._open_engine("async")
            return
        self._check_open()
        if self._loop is not _running_loop():
            raise LeadperfError(
                "this AsyncScraper is open on another event loop (a sync 'with' or another "
                "thread opened it); await it only where it was opened: use 'async with "
                "AsyncScraper() as s:' on this loop, or the *_sync methods"
            )

    async def _aenter(self) -> None:
        self._check_open()
        if self._tg is not None:
            raise LeadperfError("this AsyncScraper is already entered; enter it once")
        if self._engine is not None:
            self._ensure_open()
        self._open_engine("async")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._tg_task = anyio.get_current_task().id

    async def _aexit(self, failed: bool) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                self._stop_iterations()  # a scrape_iter left unfinished
                # A task group is left by the task that entered it; exited from another
                # task (a misused lifecycle) the stopped iterations just end on their own.
                if anyio.get_current_task().id == self._tg_task:
                    await tg.__aexit__(None, None, None)
        finally:
            await self.close()

    def _stop_iterations(self) -> None:
        # Only the iterations' own scopes: the group's scope also covers the caller's code.
        for scope in list(self._iterations):
            scope.cancel()

    async def close(self) -> None:
        """Stop background iterations and close every connection (:meth:`aclose`)."""
        await self.aclose()

    async def _aclose(self) -> None:
        loop = self._loop
        elsewhere = loop is not None and loop is not _running_loop() and loop.is_running()
        if self._engine is not None and elsewhere:
            assert loop is not None  # opened on another running loop: close it where it lives
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._aclose(), loop))
            return
        self._stop_iterations()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    def _enter(self) -> None:
        self._check_open()
        if self._engine is not None:
            raise LeadperfError("this AsyncScraper is already open; enter it once")
        run_sync(self._open_on_portal)

    def _exit(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        """Blocking :meth:`close`."""
        if self._engine is None:
            self._state = State.CLOSED
            return
        self._block(self.aclose, "close")

    async def _open_on_portal(self) -> None:
        self._open_engine("portal")

    def _block(self, func: Callable[[], Coroutine[Any, Any, T]], name: str) -> T:
        """Run ``func()`` on the loop the engine is open on, from a thread outside it."""
        loop = self._loop
        if loop is None:
            raise LeadperfError(
                f"this AsyncScraper is open on a non-asyncio event loop; use "
                f"'await scraper.{name}()'"
            )
        if loop is _running_loop():
            raise LeadperfError(
                f"this AsyncScraper is open on this thread's event loop, which a blocking "
                f"call would freeze; use 'await scraper.{name}()'"
            )
        if not loop.is_running():
            raise ClosedError(
                "the event loop this AsyncScraper was opened on has stopped; create a new one"
            )
        result: T = asyncio.run_coroutine_threadsafe(func(), loop).result()
        return result

    def _run_blocking(self, call: Callable[[], Coroutine[Any, Any, T]], name: str) -> T:
        """A ``*_sync`` call: on the open engine's loop, or borrowing one on the portal."""
        self._check_open()
        if self._engine is not None and self._owner != "portal":
            return self._block(call, name)
        result: T = run_sync(self._borrow, call)
        return result

    async def _borrow(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._engine is None:
            self._open_engine("portal", borrow=True)
            self._borrowed = True  # opened for these calls only: closed after the last one
        self._borrowers += 1
        try:
            return await call()
        finally:
            self._borrowers -= 1
            if self._borrowed and self._borrowers == 0:
                self._borrowed = False
                engine, self._engine, self._owner, self._loop = self._engine, None, None, None
                if engine is not None:
                    await engine.aclose()

    def _refuse_engine_options(self) -> None:
        """Refuse engine options before the engine is built (clear error at construction)."""
        if self.engine_name == "native":
            from ._engine import check_native_options

            check_native_options(
                proxy=self._proxy, trust_env=self._trust_env, cookies=self._cookies
            )
        if self._proxy and self.engine_name == "httpx" and self._proxy.startswith("socks"):
            raise ConfigError(
                "proxy: SOCKS proxies run on engine='aiohttp' (with leadperf[socks]); "
                "httpx needs its own socks extra",
                key="proxy",
            )
