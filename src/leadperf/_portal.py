"""One process-wide anyio blocking portal behind every ``*_sync`` twin.

The portal runs an asyncio event loop in a daemon thread. Sync callers hand coroutines
to it, which works the same in a plain script and inside a thread that already runs an
event loop (a Jupyter notebook). Resources opened through the portal live on its loop, so
every later sync call on them goes through the same portal.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["get_portal", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_portal_cm: AbstractContextManager[BlockingPortal] | None = None


def get_portal() -> BlockingPortal:
    """Return the shared portal, starting it on first use."""
    global _portal, _portal_cm
    with _lock:
        if _portal is None:
            cm = start_blocking_portal(backend="asyncio")
            _portal = cm.__enter__()
            _portal_cm = cm
            atexit.register(_shutdown)
        return _portal


def run_sync(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await func(*args)`` on the shared portal's loop and return its result."""
    return get_portal().call(func, *args)


def _shutdown() -> None:
    global _portal, _portal_cm
    with _lock:
        cm, _portal, _portal_cm = _portal_cm, None, None
    if cm is not None:
        try:
            cm.__exit__(None, None, None)
        except Exception:  # best effort at interpreter exit
            pass


def _forget_in_child() -> None:
    # A forked child (a Celery prefork worker, multiprocessing's fork start method) inherits
    # the parent's portal object but not its thread: the loop it points at is dead there.
    # Start afresh on the child's first sync call. The inherited objects are kept alive on
    # purpose: finalizing the portal's context manager would try to stop a loop thread that
    # does not exist in the child and hang.
    global _lock, _portal, _portal_cm
    if _portal_cm is not None:
        _inherited.append((_portal, _portal_cm))
    _lock = threading.Lock()
    _portal = None
    _portal_cm = None


_inherited: list[tuple[object, object]] = []

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
