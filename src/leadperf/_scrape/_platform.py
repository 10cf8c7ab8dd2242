"""Per-platform politeness: a FIFO slot limiter, request spacing and adaptive slow-down.

A platform (a host by default) has ``limit`` slots. Whoever holds a slot may send; a
released slot is handed straight to the first waiter, so the limit holds exactly however
many batches and single fetches share the platform. Throttling signals (429, 503,
``Retry-After``, a run of timeouts) halve the slots and double the spacing; steady
success restores them step by step. All of it is plain synchronous state, touched only
from the event loop's thread.
"""

from __future__ import annotations

import email.utils
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

__all__ = ["Platform", "acquire_slot", "parse_retry_after", "platform_key"]

#: Spacing added by the first throttle signal (seconds); doubled by each further one.
MIN_ADAPTIVE_DELAY = 0.1
#: Ceiling on the adaptive spacing (seconds).
MAX_ADAPTIVE_DELAY = 30.0
#: Successes in a row that undo one step of slow-down.
RECOVER_AFTER = 5
#: Throttle signals closer together than this (seconds) count once: they are usually
#: answers to requests sent before the first signal arrived.
ESCALATE_EVERY = 1.0
#: Timeouts in a row that count as a throttle signal.
TIMEOUTS_TO_THROTTLE = 3

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def platform_key(scheme: str, netloc: str) -> str:
    """The default platform of a URL: its host, with the port when it is not the default."""
    host = netloc.rpartition("@")[2].lower()
    port = _DEFAULT_PORTS.get(scheme)
    if port is not None and host.endswith(":" + port) and not host.endswith("]"):
        host = host[: -len(port) - 1]
    return host


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date).

    Returns None when absent or unparseable; never negative. ``now`` is a Unix time (for
    tests); it defaults to the current time.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def http_date(unix_time: float) -> str:
    """Format a Unix time as an HTTP date (``Retry-After``'s date form)."""
    return email.utils.format_datetime(datetime.fromtimestamp(unix_time, UTC), usegmt=True)


Grant = Callable[[], bool]


class Platform:
    """Slots, spacing and adaptive state of one platform (see the module docstring)."""

    __slots__ = (
        "_escalated_at",
        "_successes",
        "_timeouts",
        "_waiters",
        "adaptive",
        "adaptive_delay",
        "blocked_until",
        "in_flight",
        "key",
        "limit",
        "max_limit",
        "min_delay",
        "next_start",
        "pending",
        "requests",
        "throttles",
    )

    def __init__(
        self, key: str, limit: int, min_delay: float = 0.0, *, adaptive: bool = True
    ) -> None:
        self.key = key
        #: False: throttle signals never shrink the slots or add spacing (a server's
        #: ``Retry-After`` is still honoured).
        self.adaptive = adaptive
        self.max_limit = limit
        self.limit = limit
        self.min_delay = min_delay
        self.in_flight = 0
        self.adaptive_delay = 0.0
        self.next_start = 0.0
        self.blocked_until = 0.0
        self.requests = 0
        self.throttles = 0
        #: Jobs that refer to this platform and are not finished (queued or running).
        self.pending = 0
        self._successes = 0
        self._timeouts = 0
        self._escalated_at = float("-inf")
        self._waiters: deque[tuple[object, Grant]] = deque()

    # -- slots ----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a free slot now, unless others already wait (slots are handed out FIFO)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    def add_waiter(self, owner: object, grant: Grant) -> None:
        """Queue ``grant``; it is called with a slot already taken and returns False to refuse."""
        self._waiters.append((owner, grant))

    def remove_waiters(self, owner: object) -> None:
        """Forget every waiter queued by ``owner`` (it stopped waiting)."""
        if self._waiters:
            self._waiters = deque(w for w in self._waiters if w[0] is not owner)

    def may_keep(self, owner: object) -> bool:
        """True when ``owner`` may reuse the slot it holds for its next request.

        Only when nobody else waits and a slow-down has not taken the slot away.
        """
        if self.in_flight > self.limit:
            return False
        waiters = self._waiters
        return not waiters or (len(waiters) == 1 and waiters[0][0] is owner)

    def release(self) -> None:
        """Give a slot back; the first waiter gets it."""
        self.in_flight -= 1
        if self._waiters:
            self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            _, grant = waiters.popleft()
            self.in_flight += 1
            if not grant():
                self.in_flight -= 1

    @property
    def idle(self) -> bool:
        """Nothing queued or in flight, nobody waiting, no slow-down left to remember."""
        return (
            self.in_flight == 0
            and self.pending == 0
            and not self._waiters
            and self.limit == self.max_limit
            and self.adaptive_delay == 0.0
            and self.blocked_until <= time.monotonic()
        )

    def set_max_limit(self, limit: int) -> None:
        """Change the configured limit live; a slowed-down platform stays slowed down."""
        if self.limit >= self.max_limit:
            self.limit = limit
        else:
            self.limit = min(self.limit, limit)
        self.max_limit = limit
        if self._waiters:
            self._grant()

    # -- spacing --------------------------------------------------------------------------

    def reserve(self, delay: float, now: float) -> float:
        """Reserve the next start time; return how long to sleep before sending (seconds).

        Starts are spaced by ``max(delay, min_delay, adaptive delay)`` and never before a
        ``Retry-After`` block ends.
        """
        self.requests += 1
        spacing = max(delay, self.min_delay, self.adaptive_delay)
        start = now
        if self.next_start > start:
            start = self.next_start
        if self.blocked_until > start:
            start = self.blocked_until
        if spacing > 0.0 or start > now:
            self.next_start = start + spacing
        return start - now

    # -- adaptive politeness -----------------------------------------------------------------

    def on_success(self) -> None:
        """A response that was not a throttle signal."""
        self._timeouts = 0
        if self.limit < self.max_limit or self.adaptive_delay:
            self._successes += 1
            if self._successes >= RECOVER_AFTER:
                self._successes = 0
                delay = self.adaptive_delay / 2
                self.adaptive_delay = delay if delay >= MIN_ADAPTIVE_DELAY / 2 else 0.0
                if self.limit < self.max_limit:
                    self.limit += 1
                    if self._waiters:
                        self._grant()

    def on_throttle(self, now: float, retry_after: float | None) -> None:
        """A 429/503, a ``Retry-After`` or a run of timeouts: slow this platform down."""
        self.throttles += 1
        self._successes = 0
        if self.adaptive and now - self._escalated_at >= ESCALATE_EVERY:
            self._escalated_at = now
            self.limit = max(1, self.limit // 2)
            self.adaptive_delay = min(
                MAX_ADAPTIVE_DELAY, max(MIN_ADAPTIVE_DELAY, self.adaptive_delay * 2)
            )
        if retry_after is not None and now + retry_after > self.blocked_until:
            self.blocked_until = now + retry_after

    def on_timeout(self, now: float) -> None:
        """A request timed out; several in a row count as a throttle signal."""
        self._timeouts += 1
        if self._timeouts >= TIMEOUTS_TO_THROTTLE:
            self._timeouts = 0
            self.on_throttle(now, None)


async def acquire_slot(platform: Platform) -> None:
    """Wait for a slot of ``platform`` (FIFO with every other waiter)."""
    if platform.try_acquire():
        return
    event = anyio.Event()
    state = {"granted": False, "gone": False}

    def grant() -> bool:
        if state["gone"]:
            return False
        state["granted"] = True
        event.set()
        return True

    owner = object()
    platform.add_waiter(owner, grant)
    try:
        await event.wait()
    except BaseException:
        state["gone"] = True
        if state["granted"]:
            platform.release()
        else:
            platform.remove_waiters(owner)
        raise
