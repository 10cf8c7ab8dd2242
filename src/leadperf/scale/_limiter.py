"""RedisLimiter: per-platform concurrency, spacing and slow-down shared by every worker.

Concurrency is a set of leases in a sorted set (token -> expiry): a worker that dies holds
its slots only until their leases run out, and a live worker renews its leases in the
background. Spacing (the platform's ``delay``) is a reserved next-start time, and the
adaptive slow-down and ``Retry-After`` live in a shared hash, so one worker's 429 slows
the platform for every worker. Each decision is one Lua script (:mod:`._lua`); commands
issued in the same event-loop tick share one pipeline (:mod:`._pipeline`), and a release
is sent without waiting for its answer.

When Redis cannot be reached the limiter says so in the log and in :meth:`stats` and
falls back to in-process limits (:mod:`._local`) until Redis answers again: a worker
then keeps its own per-platform limits, never none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
import uuid
from typing import Any

import attrs

from .._core.validate import positive_number
from .._util import mask_url, require
from ..errors import CacheUnavailableError, ClosedError, ConfigError
from . import _lua
from ._local import LocalLimits, report_kind
from ._pipeline import AutoPipeline, register

__all__ = ["Lease", "LimiterStats", "RedisLimiter"]

_log = logging.getLogger("leadperf.scale")

#: Seconds a release waits for the next acquire of its platform to ride along with.
RELEASE_DELAY = 0.002

_ACQUIRE = register(_lua.ACQUIRE)
_RENEW = register(_lua.RENEW)
_REPORT = register(_lua.REPORT)


@attrs.frozen
class Lease:
    """A slot handed out by :meth:`RedisLimiter.acquire`; give it back with ``release``."""

    platform: str
    token: str
    shared: bool


@attrs.frozen
class LimiterStats:
    """A snapshot of a :class:`RedisLimiter`'s counters (stable names).

    ``shared`` is False while the limiter runs on local limits; ``fallbacks`` counts the
    times it lost Redis. ``round_trips`` and ``commands`` count what went to Redis;
    ``polls`` counts acquires that found every slot taken and had to ask again.
    """

    shared: bool
    acquires: int
    shared_acquires: int
    local_acquires: int
    polls: int
    releases: int
    reports: int
    renewals: int
    fallbacks: int
    round_trips: int
    commands: int
    errors: int
    held: int
    last_error: str | None

    @property
    def round_trips_per_acquire(self) -> float:
        """Redis round trips per acquire (releases, reports and renewals included)."""
        return self.round_trips / self.acquires if self.acquires else 0.0


def _tag(platform: str) -> str:
    """A hash tag for ``platform``: itself when safe, else a digest (braces would split it)."""
    if platform and len(platform) <= 200 and "{" not in platform and "}" not in platform:
        return platform
    return "h:" + hashlib.sha1(platform.encode(), usedforsecurity=False).hexdigest()


class RedisLimiter:
    """A :class:`~leadperf._scrape._shared.SharedLimiter` on Redis (or Redis Cluster).

    Pass it as ``AsyncScraper(limiter=RedisLimiter.from_url("redis://host:6379/0"))``;
    every worker pointed at the same Redis and ``prefix`` shares each platform's limits.

    Args:
        redis: a ``redis://``/``rediss://``/``unix://`` URL (the limiter owns and closes its
            client) or a ``redis.asyncio.Redis``/``RedisCluster`` client (left open).
        prefix: key prefix; keys are ``<prefix>:{<platform>}:slots`` and ``...:state``.
        lease: seconds a slot stays held without renewal; a killed worker's slots come
            back within this time. Renewed every ``lease / 3`` while held.
        timeout: seconds to wait for Redis on connect and on each command before
            falling back to local limits.
        retry_interval: seconds on local limits before Redis is tried again.
        poll_interval: longest pause (seconds) between asks while every slot is taken.
        cluster: ``redis`` is a URL of any node of a Redis Cluster.

    Raises:
        ConfigError: a bad argument.
        MissingDependencyError: redis-py is not installed (``leadperf[scale]``).
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "leadperf:limit",
        lease: float = 30.0,
        timeout: float = 1.0,
        retry_interval: float = 2.0,
        poll_interval: float = 0.02,
        cluster: bool = False,
    ) -> None:
        self._redis_mod = require("redis", "scale")
        require("redis.asyncio", "scale")
        self.lease = positive_number(lease, "lease")
        self.timeout = positive_number(timeout, "timeout")
        self.retry_interval = positive_number(retry_interval, "retry_interval")
        self.poll_interval = positive_number(poll_interval, "poll_interval")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"prefix: must be a non-empty str, got {prefix!r}", key="prefix")
        self.prefix = prefix
        if isinstance(redis, str):
            self._client = self._client_from_url(redis, cluster)
            self._owns_client = True
            self._where = mask_url(redis) or "redis"
        elif callable(getattr(redis, "execute_command", None)):
            self._client = redis
            self._owns_client = False
            self._where = type(redis).__name__
        else:
            raise ConfigError(
                f"redis: must be a redis:// URL or a redis.asyncio client, got {type(redis)!r}",
                key="redis",
            )
        self._pipe = AutoPipeline(self._client, self._redis_mod.exceptions)
        self._local = LocalLimits()
        self._worker = uuid.uuid4().hex[:12]
        self._seq = 0
        self._held: dict[str, set[str]] = {}
        self._gates: dict[str, asyncio.Lock] = {}
        self._released: dict[str, list[str]] = {}
        self._key_cache: dict[str, tuple[str, str]] = {}
        self._local_held: set[str] = set()
        self._release_timer: asyncio.TimerHandle | None = None
        self._limits: dict[str, int] = {}
        self._slowed: set[str] = set()
        self._down = False
        self._down_until = 0.0
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._counts = dict.fromkeys(
            ("acquires", "shared", "local", "polls", "releases", "reports", "renewals"), 0
        )
        self._fallbacks = 0
        self._errors = 0
        self._last_error: str | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLimiter:
        """A limiter on the Redis at ``url``; ``options`` as for the constructor."""
        return cls(url, **options)

    def _client_from_url(self, url: str, cluster: bool) -> Any:
        from redis.asyncio import Redis, RedisCluster
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"redis: expected a redis://, rediss:// or unix:// URL, got {mask_url(url)!r}",
                key="redis",
            )
        # One quick retry (a pooled connection may be stale after a Redis restart), then
        # fail fast: a worker should fall back to local limits, not hang on a dead server.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        if cluster:
            return RedisCluster.from_url(url, **options)
        return Redis.from_url(url, health_check_interval=0, **options)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("shared" if self.shared else "local")
        return f"<RedisLimiter {self._where} prefix={self.prefix!r} lease={self.lease}s {state}>"

    @property
    def worker_id(self) -> str:
        """This limiter's id; every lease token it holds in Redis starts with it and ``:``."""
        return self._worker

    @property
    def shared(self) -> bool:
        """False from a failed Redis call until Redis answers again (local limits meanwhile)."""
        return not self._down

    def _keys(self, platform: str) -> tuple[str, str]:
        keys = self._key_cache.get(platform)
        if keys is None:
            if len(self._key_cache) >= 10_000:
                self._key_cache.clear()  # bounded: platforms come and go in long runs
            base = f"{self.prefix}:{{{_tag(platform)}}}"
            keys = self._key_cache[platform] = (base + ":slots", base + ":state")
        return keys

    # -- the SharedLimiter protocol ---------------------------------------------------------

    async def acquire(self, platform: str, limit: int, delay: float) -> Lease:
        """Wait for one of ``limit`` shared slots of ``platform`` and for its spacing.

        Args:
            platform: the platform key.
            limit: slots allowed at once across every worker.
            delay: minimum seconds between two sends to the platform, across every worker.

        Returns:
            The :class:`Lease` to pass to :meth:`release`.

        Raises:
            ClosedError: the limiter was closed.
            ConfigError: ``limit`` is not an int >= 1 or ``delay`` is negative.
        """
        if self._closed:
            raise ClosedError("this RedisLimiter is closed; create a new one")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit: must be an int >= 1, got {limit!r}", key="limit")
        if not isinstance(delay, int | float) or not delay >= 0 or math.isinf(delay):
            raise ConfigError(f"delay: must be seconds >= 0, got {delay!r}", key="delay")
        self._counts["acquires"] += 1
        self._limits[platform] = limit
        if self._down_until <= time.monotonic():
            try:
                lease = await self._acquire_shared(platform, limit, float(delay))
                if self._down:
                    self._down = False
                    _log.warning("shared limiter: Redis at %s answers again", self._where)
                return lease
            except self._redis_mod.RedisError as exc:
                self._went_down(exc)
            except OSError as exc:
                self._went_down(exc)
        await self._local.acquire(platform, limit, float(delay))
        self._counts["local"] += 1
        self._seq += 1
        token = f"local:{self._seq}"
        self._local_held.add(token)
        return Lease(platform, token, shared=False)

    async def _acquire_shared(self, platform: str, limit: int, delay: float) -> Lease:
        self._seq += 1
        token = f"{self._worker}:{self._seq}"
        granted, seconds = await self._ask(platform, token, limit, delay)
        if not granted:
            gate = self._gates.get(platform)
            if gate is None:
                gate = self._gates[platform] = asyncio.Lock()
            # Every slot is taken: only the first waiter of this process asks Redis again
            # and again; the others queue behind it here (FIFO), so a crowd of waiters
            # costs one poller per worker and platform.
            async with gate:
                seconds = await self._poll(platform, token, limit, delay)
        self._held.setdefault(platform, set()).add(token)
        self._ensure_renewer()
        wait = float(seconds)
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException:
                self._release_shared(platform, token)
                raise
        self._counts["shared"] += 1
        return Lease(platform, token, shared=True)

    async def _ask(self, platform: str, token: str, limit: int, delay: float) -> tuple[bool, str]:
        """One ACQUIRE: (granted, seconds to wait before sending or until a lease expires)."""
        keys = self._keys(platform)
        # Releases since the last ask ride along instead of costing a command of their own.
        released = self._released.pop(platform, ())
        command = AutoPipeline.evalsha(
            _ACQUIRE, keys, (token, limit, repr(delay), repr(self.lease), *released)
        )
        try:
            granted, seconds, slowed = await self._pipe.call(command)
        except BaseException:
            # The script may have run before the failure reached us, or never carried the
            # releases: drop the token and send the releases on their own.
            self._pipe.submit(("ZREM", keys[0], token, *released), wait=False)
            raise
        if slowed:
            self._slowed.add(platform)
        else:
            self._slowed.discard(platform)
        text = seconds.decode("ascii") if isinstance(seconds, bytes) else str(seconds)
        return bool(granted), text

    async def _poll(self, platform: str, token: str, limit: int, delay: float) -> str:
        pause = 0.001
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # A cancel request that a library below swallowed (a timeout racing the
                # cancellation): honour it rather than wait for a slot forever.
                raise asyncio.CancelledError
            granted, seconds = await self._ask(platform, token, limit, delay)
            if granted:
                return seconds
            self._counts["polls"] += 1
            hint = float(seconds)
            await asyncio.sleep(min(pause, max(hint, 0.001)) * random.uniform(0.5, 1.0))
            pause = min(pause * 2, self.poll_interval)

    async def release(self, platform: str, lease: object) -> None:
        """Give back ``lease``; returns at once (the release is sent with the next batch).

        Never raises for an expired lease or while Redis is unreachable.
        """
        if not isinstance(lease, Lease):
            raise ConfigError(
                f"lease: must be a Lease from RedisLimiter.acquire, got {lease!r}", key="lease"
            )
        self._counts["releases"] += 1
        if lease.shared:
            self._release_shared(platform, lease.token)
        elif lease.token in self._local_held:  # a lease given back twice counts once
            self._local_held.discard(lease.token)
            self._local.release(platform)

    def _release_shared(self, platform: str, token: str) -> None:
        held = self._held.get(platform)
        if held is None or token not in held:
            return
        held.discard(token)
        if not held:
            del self._held[platform]
        if self._closed:
            return
        # The release rides on this worker's next acquire of the platform when one comes
        # within RELEASE_DELAY (the common case in a busy worker), else goes out alone.
        self._released.setdefault(platform, []).append(token)
        if self._release_timer is None:
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(RELEASE_DELAY, self._flush_releases)

    def _flush_releases(self) -> None:
        self._release_timer = None
        released, self._released = self._released, {}
        for platform, tokens in released.items():
            self._pipe.submit(("ZREM", self._keys(platform)[0], *tokens), wait=False)

    async def report(self, platform: str, status: int | None, retry_after: float | None) -> None:
        """Record an attempt's outcome so a 429, 503 or ``Retry-After`` slows every worker.

        A plain success is sent only while the platform is slowed down (it counts toward
        recovery); otherwise it costs nothing.
        """
        kind = report_kind(status, retry_after)
        self._local.report(platform, kind, retry_after)
        if kind is None or self._closed or self._down_until > time.monotonic():
            return
        if kind == "success" and platform not in self._slowed:
            return
        self._counts["reports"] += 1
        args = (kind, repr(-1.0 if retry_after is None else float(retry_after)))
        command = AutoPipeline.evalsha(
            _REPORT, self._keys(platform)[1:], (*args, self._limits.get(platform, 1))
        )
        if kind == "success":
            self._pipe.submit(command, wait=False)
            return
        self._slowed.add(platform)
        try:
            await self._pipe.call(command)
        except (self._redis_mod.RedisError, OSError) as exc:
            self._went_down(exc)

    # -- fallback, renewal, lifecycle --------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = type(exc).__name__
        if not self._down:
            self._down = True
            self._fallbacks += 1
            _log.warning(
                "shared limiter: Redis at %s is unreachable (%s); using local per-worker "
                "limits for %.1f s before trying again",
                self._where,
                type(exc).__name__,
                self.retry_interval,
            )
        self._down_until = time.monotonic() + self.retry_interval

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self._held and not self._closed:
            await asyncio.sleep(self.lease / 3)
            for platform, tokens in list(self._held.items()):
                if not tokens:
                    continue
                command = AutoPipeline.evalsha(
                    _RENEW, self._keys(platform)[:1], (repr(self.lease), *sorted(tokens))
                )
                try:
                    self._counts["renewals"] += int(await self._pipe.call(command))
                except (self._redis_mod.RedisError, OSError) as exc:
                    # Unrenewed leases simply expire: the slots come back by themselves.
                    self._errors += 1
                    self._last_error = type(exc).__name__

    def stats(self) -> LimiterStats:
        """A snapshot of the counters (see :class:`LimiterStats`)."""
        counts = self._counts
        return LimiterStats(
            shared=self.shared,
            acquires=counts["acquires"],
            shared_acquires=counts["shared"],
            local_acquires=counts["local"],
            polls=counts["polls"],
            releases=counts["releases"],
            reports=counts["reports"],
            renewals=counts["renewals"],
            fallbacks=self._fallbacks,
            round_trips=self._pipe.round_trips,
            commands=self._pipe.commands,
            errors=self._errors + self._pipe.dropped_errors,
            held=sum(len(t) for t in self._held.values()) + self._local.in_flight(),
            last_error=self._last_error,
        )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    async def close(self) -> None:
        """Send pending releases, give back every slot still held, stop renewing.

        Idempotent; closes the Redis client only when the limiter made it from a URL.
        """
        if self._closed:
            return
        self._closed = True
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        if self._release_timer is not None:
            self._release_timer.cancel()
        self._flush_releases()
        for platform, tokens in self._held.items():
            if tokens:
                self._pipe.submit(("ZREM", self._keys(platform)[0], *tokens), wait=False)
        self._held.clear()
        try:
            await self._pipe.flush()
        finally:
            if self._owns_client:
                await self._client.aclose()

    async def aclose(self) -> None:
        """:meth:`close`, under the name every leadperf part is closed by."""
        await self.close()

    async def ping(self) -> float:
        """Ask Redis for a ``PING`` now (for status screens); the limiter's state is unchanged.

        Returns:
            The round trip in milliseconds.

        Raises:
            CacheUnavailableError: Redis did not answer (the message carries no credentials).
        """
        started = time.perf_counter()
        try:
            await self._client.execute_command("PING")
        except (self._redis_mod.RedisError, OSError) as exc:
            raise CacheUnavailableError(
                f"limiter store at {self._where} is unreachable ({type(exc).__name__})"
            ) from None
        return (time.perf_counter() - started) * 1000

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
