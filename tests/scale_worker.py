"""A scraping worker process for the scale-out tests, and a throwaway redis-server.

Run as ``python3 tests/scale_worker.py CONFIG.json``. Every worker gets the whole URL list
and the same shared stores; they split the work through the stores alone:

- ``claims`` (a :class:`~leadperf.scale.DedupSet` with a ttl): the first worker to add a
  URL fetches it. A claim of a worker that died expires, so another one takes the URL.
- ``done`` (a DedupSet without ttl): URLs fetched; a worker stops when all are done.
- the :class:`~leadperf.scale.RedisLimiter`: each platform's limit and spacing, across
  every worker.

Each fetched URL is appended to the worker's output file as a JSON line; the limiter's
stats are the last line (``{"stats": ...}``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_QUIET = ("--save", "", "--appendonly", "no")


class OwnRedis:
    """A redis-server of the test's own on a free loopback port (stop/start it at will)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="leadperf-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", *_QUIET, "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_worker(config: dict[str, Any], path: str) -> subprocess.Popen[bytes]:
    """Start one worker process with ``config`` written to ``path`` (its output beside it)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC)}
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(path + ".err", "wb"),  # closed with the process
    )


def read_output(path: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(fetched rows, final limiter stats or None) from a worker's output file."""
    rows: list[dict[str, Any]] = []
    stats = None
    if not os.path.exists(path):
        return rows, stats
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                continue  # a line cut short by SIGKILL
            item = json.loads(line)
            if "stats" in item:
                stats = item["stats"]
            elif "url" in item:
                rows.append(item)
    return rows, stats


async def _run(config: dict[str, Any]) -> None:
    import attrs
    import httpx

    from leadperf.scale import DedupSet, RedisLimiter

    urls: list[str] = config["urls"]
    limits: dict[str, int] = config["limits"]
    delay = float(config["delay"])
    limiter = RedisLimiter(
        config["limiter_url"],
        prefix=config["prefix"],
        lease=config["lease"],
        timeout=float(config.get("timeout", 2.0)),
        retry_interval=0.5,
    )
    claims = DedupSet.from_url(config["dedup_url"], name=config["name"] + "_c", ttl=config["ttl"])
    done = DedupSet.from_url(config["dedup_url"], name=config["name"] + "_d")
    local = {p: asyncio.Semaphore(n) for p, n in limits.items()}
    out = open(config["out"], "a", encoding="utf-8")  # noqa: SIM115
    out.write(json.dumps({"worker": limiter.worker_id}) + "\n")
    out.flush()

    async def fetch(client: httpx.AsyncClient, url: str) -> None:
        platform = url.split("/")[2]
        async with local[platform]:
            lease = await limiter.acquire(platform, limits[platform], delay)
            status: int | None = None
            sent = time.monotonic()
            try:
                status = (await client.get(url)).status_code
            except httpx.HTTPError:
                pass
            finally:
                got = time.monotonic()
                await limiter.release(platform, lease)
            await limiter.report(platform, status, None)
        row = {"url": url, "status": status, "pid": os.getpid(), "sent": sent, "got": got}
        out.write(json.dumps(row) + "\n")
        out.flush()

    chunk = int(config.get("chunk", 40))
    room = asyncio.Semaphore(2 * sum(limits.values()))  # URLs fetched at once by this worker
    finished: list[str] = []

    async def one(client: httpx.AsyncClient, url: str) -> None:
        try:
            await fetch(client, url)
            finished.append(url)
        finally:
            room.release()

    async def mark_done() -> None:
        if finished:
            batch = finished[:]
            del finished[: len(batch)]
            await done.add_many(batch)

    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=64)) as client:
        tasks: set[asyncio.Task[None]] = set()
        while True:
            await mark_done()
            pending = [
                u for u, d in zip(urls, await done.contains_many(urls), strict=True) if not d
            ]
            if not pending:
                break
            took = 0
            for i in range(0, len(pending), chunk):
                part = pending[i : i + chunk]
                mine = [u for u, new in zip(part, await claims.add_many(part), strict=True) if new]
                took += len(mine)
                for url in mine:
                    await room.acquire()
                    task = asyncio.ensure_future(one(client, url))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await mark_done()
            if tasks:
                await asyncio.gather(*list(tasks))
            elif not took:
                await asyncio.sleep(0.1)  # others hold the rest, or a dead worker's claims expire
    out.write(json.dumps({"stats": attrs.asdict(limiter.stats())}) + "\n")
    out.close()
    await limiter.close()
    await claims.close()
    await done.close()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    asyncio.run(_run(config))


if __name__ == "__main__":
    main()
