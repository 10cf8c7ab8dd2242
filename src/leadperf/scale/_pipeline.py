"""Automatic pipelining: every Redis command issued in one event-loop tick goes out together.

A worker running many requests at once issues many acquires and releases close together;
sending each alone would cost one round trip apiece. :class:`AutoPipeline` queues commands
and sends the queue as one pipeline on the next tick (the ioredis "auto-pipelining" idea),
so under load a request costs a fraction of a round trip. Scripts are sent as ``EVALSHA``
and loaded once when the server answers ``NOSCRIPT`` (a restarted or new server).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["AutoPipeline", "Script"]


class Script:
    """A Lua script known by its SHA1, so a call sends the digest, not the source."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


Command = tuple[Any, ...]


class AutoPipeline:
    """Queue commands on a ``redis.asyncio`` client and send each tick's queue as one pipeline.

    ``submit(..., wait=False)`` is fire-and-forget (a release: nobody needs the answer);
    ``call`` awaits the reply. A connection failure fails every command of its batch.
    """

    def __init__(self, client: Any, errors: Any) -> None:
        """``client`` is a ``redis.asyncio`` client; ``errors`` is ``redis.exceptions``."""
        self._client = client
        self._no_script: type[Exception] = errors.NoScriptError
        self._reply_error: type[Exception] = errors.ResponseError
        self._queue: list[tuple[Command, asyncio.Future[Any] | None]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy = 0  # commands sent directly and not answered yet
        self.round_trips = 0
        self.commands = 0
        self.dropped_errors = 0

    def submit(self, command: Command, *, wait: bool) -> asyncio.Future[Any] | None:
        """Queue ``command``; return a future for its reply when ``wait`` is true."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] | None = loop.create_future() if wait else None
        self._queue.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        return future

    async def call(self, command: Command) -> Any:
        """Send ``command`` with this tick's others and return its reply (or raise its error).

        When nothing else is queued the command goes out at once from the caller's task
        (no hop through the loop); commands issued meanwhile queue and share a pipeline.
        """
        if not self._busy and not self._queue and not self._scheduled:
            self._busy += 1
            try:
                reply = (await self._execute([command]))[0]
            finally:
                self._busy -= 1
            if isinstance(reply, Exception):
                raise reply
            return reply
        future = self.submit(command, wait=True)
        assert future is not None
        return await future

    @staticmethod
    def evalsha(script: Script, keys: Sequence[str], args: Sequence[Any]) -> Command:
        """The ``EVALSHA`` command running ``script`` on ``keys`` with ``args``."""
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    def _start(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait until everything queued so far has been sent and answered."""
        self._start()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any] | None]]) -> None:
        try:
            replies = await self._execute([command for command, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if future is None:
                    self.dropped_errors += 1
                elif not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                if future is not None and not future.done():
                    future.cancel()
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None:
                if isinstance(reply, Exception):
                    self.dropped_errors += 1
            elif not future.done():
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        replies = await self._round_trip(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if missing:
            # The server lost its script cache (restart, failover, new server): load each
            # script once from its source, then resend only the commands that failed.
            for sha in {commands[i][1] for i in missing}:
                # script_load, not a raw SCRIPT LOAD: a cluster client sends it to every
                # primary, since the next call may land on any of them.
                await self._client.script_load(_SOURCES[sha])
            again = await self._round_trip([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        self.round_trips += 1
        self.commands += len(commands)
        if len(commands) == 1:
            try:
                return [await self._client.execute_command(*commands[0])]
            except self._reply_error as exc:
                # The server refused this one command (NOSCRIPT, a wrong type); the
                # connection is fine, so it is a reply like any other.
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


#: Script sources by SHA1, so a NOSCRIPT reply can be repaired from the digest alone.
_SOURCES: dict[str, str] = {}


def register(source: str) -> Script:
    """Return the :class:`Script` for ``source`` and remember it for ``NOSCRIPT`` repairs."""
    script = Script(source)
    _SOURCES[script.sha] = source
    return script
