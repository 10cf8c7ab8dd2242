"""One lifecycle for every part: a state enum and async and sync resource bases.

As httpx's ``ClientState`` and anyio's ``AsyncResource``: a resource goes
``NEW -> OPEN -> CLOSED`` once. Opening is idempotent, closing is idempotent, a closed
resource never reopens, and every use after close raises :class:`ClosedError` naming
the object. A part subclasses :class:`AsyncResource` (or :class:`SyncResource`) and
implements only ``_aopen()``/``_aclose()`` (``_open()``/``_close()``); the context
manager methods are derived from ``open`` and ``aclose``/``close``. A part whose entry
does more (starts a task group, refuses a second entry) overrides the ``_aenter()``/
``_aexit(failed)`` hooks of :class:`AsyncContext`, never the dunders; an async part with a
blocking front adds :class:`BlockingContext` and its ``_enter()``/``_exit()`` hooks.

Hot paths call :meth:`AsyncResource._check_open` (one identity test) or read
``self._state`` directly. :func:`aclose_resource` closes any resource through the one
:class:`Closeable` interface, so an owner (the facade) never duck-types a close.
"""

from __future__ import annotations

import enum
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import anyio

from ..errors import ClosedError

__all__ = [
    "AsyncContext",
    "AsyncResource",
    "BlockingContext",
    "Closeable",
    "State",
    "SyncResource",
    "aclose_resource",
]


class State(enum.Enum):
    """Where a resource is in its one-way life."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Lifecycle:
    """What both bases share: the state, ``closed``, and the use-after-close error."""

    # Class-level default so a subclass that sets up its own fields first still starts NEW.
    _state: State = State.NEW
    #: What the ClosedError message tells the caller to do instead.
    _closed_hint: ClassVar[str] = "create a new one"
    #: Run the close step even when never opened: for resources whose pieces open
    #: lazily on their own (a tiered cache's tiers), so closing must reach them.
    _close_when_new: ClassVar[bool] = False

    @property
    def closed(self) -> bool:
        """True once closed; a closed resource is never reopened."""
        return self._state is State.CLOSED

    def _closed_error(self) -> ClosedError:
        """The error for a use or an open after close, naming this object by its repr
        (every part's repr masks credentials)."""
        return ClosedError(f"{self!r} is closed and cannot be reopened; {self._closed_hint}")

    def _is_closed(self) -> bool:
        return self._state is State.CLOSED

    def _check_open(self) -> None:
        """Raise :class:`ClosedError` when closed; cheap enough for every call."""
        if self._state is State.CLOSED:
            raise self._closed_error()

    def _mark_open(self) -> None:
        """For resources ready at construction: start OPEN (``close`` then runs the
        subclass's close step)."""
        if self._state is State.NEW:
            self._state = State.OPEN


class AsyncContext:
    """``async with`` for both bases, derived from two hooks a part may override:
    ``_aenter()`` and ``_aexit(failed)``."""

    async def __aenter__(self) -> Self:
        await self._aenter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._aexit(exc_type is not None)

    async def _aenter(self) -> None:
        raise NotImplementedError

    async def _aexit(self, failed: bool) -> None:
        raise NotImplementedError


class BlockingContext:
    """``with`` derived from ``_enter()`` and ``_exit()``: the sync base's, and the
    blocking front of an async part (the facade, the scraper) that runs on a portal."""

    def __enter__(self) -> Self:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    def _enter(self) -> None:
        raise NotImplementedError

    def _exit(self) -> None:
        raise NotImplementedError


class AsyncResource(AsyncContext, _Lifecycle):
    """Base of an async part: ``open()``, idempotent ``aclose()``, ``async with``.

    Subclasses implement ``_aopen()`` (acquire; runs once, under a lock) and
    ``_aclose()`` (release; runs once, only when the open step had completed).
    """

    _open_lock: anyio.Lock | None = None

    async def open(self) -> Self:
        """Open now (idempotent; concurrent callers wait for one open).

        Returns:
            The resource itself.

        Raises:
            ClosedError: the resource was closed.
        """
        if self._state is State.OPEN:
            return self
        if self._state is State.CLOSED:
            raise self._closed_error()
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            if self._state is State.NEW:
                await self._aopen()
                # aclose() may have run while _aopen awaited: release what it opened.
                if self._is_closed():
                    await self._aclose()
                    raise self._closed_error()
                self._state = State.OPEN
            elif self._state is State.CLOSED:
                raise self._closed_error()
        return self

    async def aclose(self) -> None:
        """Release what the resource holds; idempotent, and the resource stays closed."""
        if self._state is State.CLOSED:
            return
        was_open = self._state is State.OPEN
        self._state = State.CLOSED
        if was_open or self._close_when_new:
            await self._aclose()

    async def _aenter(self) -> None:
        """What ``async with`` does on entry: :meth:`open` (a part that also starts a
        task group, or refuses a second entry, overrides this)."""
        await self.open()

    async def _aexit(self, failed: bool) -> None:
        """What ``async with`` does on exit (``failed``: the block raised): :meth:`aclose`."""
        await self.aclose()

    async def _aopen(self) -> None:
        """Acquire the resource's connections, pools or tasks (nothing by default)."""

    async def _aclose(self) -> None:
        """Release what :meth:`_aopen` acquired (nothing by default)."""


class SyncResource(BlockingContext, AsyncContext, _Lifecycle):
    """Base of a sync part: ``open()``, idempotent ``close()``, ``with`` and ``async with``.

    Subclasses implement ``_open()`` and ``_close()``. ``aclose()`` is the same close for
    owners that close every part with ``await part.aclose()``.
    """

    def open(self) -> None:
        """Open now (idempotent).

        Raises:
            ClosedError: the resource was closed.
        """
        if self._state is State.OPEN:
            return
        if self._state is State.CLOSED:
            raise self._closed_error()
        self._open()
        self._state = State.OPEN

    def close(self) -> None:
        """Release what the resource holds; idempotent, and the resource stays closed."""
        if self._state is State.CLOSED:
            return
        was_open = self._state is State.OPEN
        self._state = State.CLOSED
        if was_open or self._close_when_new:
            self._close()

    async def aclose(self) -> None:
        """:meth:`close`, awaitable: the one interface owners close parts through."""
        self.close()

    def _enter(self) -> None:
        self.open()

    def _exit(self) -> None:
        self.close()

    async def _aenter(self) -> None:
        self.open()

    async def _aexit(self, failed: bool) -> None:
        # Through aclose(), so a part whose close blocks can move it off the event loop.
        await self.aclose()

    def _open(self) -> None:
        """Acquire the resource's state (nothing by default)."""

    def _close(self) -> None:
        """Release what :meth:`_open` acquired (nothing by default)."""


@runtime_checkable
class Closeable(Protocol):
    """Anything an owner can close with ``await part.aclose()``."""

    async def aclose(self) -> None:
        """Release the resource; idempotent."""


async def aclose_resource(resource: Closeable | Any) -> None:
    """Close ``resource`` through the one interface: ``await resource.aclose()``.

    Args:
        resource: any :class:`Closeable` (both bases are, as are the scraper and the
            Chrome pool).

    Raises:
        TypeError: ``resource`` has no ``aclose()`` coroutine method.
    """
    if not isinstance(resource, Closeable):
        raise TypeError(f"{type(resource).__name__} has no aclose(); it cannot be closed here")
    await resource.aclose()
