"""A scraping worker process for the scale-out tests, and a throwaway redis-server.

Run as ``python3 tests/scale_worker.py CONFIG.json``. Every worker gets the whole URL list
and the same shared stores; they split the work through the stores alone:

- ``claims`` (a :class:`~leadperf.scale.DedupSet` with a ttl): the first worker to add a
  URL fetches it. A claim of a worker that died expires, so another one takes the URL.
- ``done`` (a DedupSet without ttl): URLs fetched; a worker stops when all are done.
- the :class:`~leadperf.scale.RedisLimiter`: each platform's limit and spacing, across
  every worker.

Fetching goes through ``AsyncScraper(limiter=..., dedup=claims)``, the way an application
spreads one batch over many processes.

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

    def start(self, *, cluster: bool = False) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        extra: list[str] = []
        if cluster:  # the bus port, given explicitly: port + 10000 may be taken or past 65535
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            extra += ["--cluster-port", str(free_port())]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        self.proc = subprocess.Popen(
            [*args, *_QUIET, *extra],
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
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnCluster:
    """A Redis Cluster of ``n`` primaries (no replicas) on free loopback ports."""

    def __init__(self, n: int = 3) -> None:
        self.nodes = [OwnRedis() for _ in range(n)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> OwnCluster:
        try:
            return self._start()
        except BaseException:
            self.close()  # never leave a half-made cluster running
            raise

    def _start(self) -> OwnCluster:
        for node in self.nodes:
            node.start(cluster=True)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # every node agrees the cluster is up
            out = [
                subprocess.run(
                    [cli, "-p", str(n.port), "cluster", "info"], capture_output=True, timeout=5
                ).stdout
                for n in self.nodes
            ]
            if all(b"cluster_state:ok" in o for o in out):
                return self
            time.sleep(0.1)
        raise RuntimeError("the test Redis Cluster did not come up")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


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
            elif "url" in item:  # a fetched URL (both modes)
                rows.append(item)
    return rows, stats


async def _run(config: dict[str, Any]) -> None:
    import attrs

    from leadperf import AsyncScraper, RetryPolicy
    from leadperf.scale import DedupSet, RedisLimiter

    urls: list[str] = config["urls"]
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
    out = open(config["out"], "a", encoding="utf-8")  # noqa: SIM115
    out.write(json.dumps({"worker": limiter.worker_id}) + "\n")
    out.flush()
    scraper = AsyncScraper(
        limits=config["limits"],
        limiter=limiter,
        dedup=claims,  # the first worker to claim a URL fetches it
        retry=RetryPolicy(attempts=1),
        timeout=10.0,
    )
    chunk = int(config.get("chunk", 40))
    batches = asyncio.Semaphore(2)  # two chunks in flight keep every platform busy

    async def run_chunk(part: list[str]) -> int:
        try:
            results = await scraper.scrape_batch(part, delay_seconds=delay)
        finally:
            batches.release()
        fetched = [r for r in results if not r.duplicate]
        for r in fetched:
            row = {"url": r.url, "status": r.status_code, "pid": os.getpid()}
            out.write(json.dumps(row) + "\n")
        out.flush()
        if fetched:
            await done.add_many([r.url for r in fetched])
        return len(fetched)

    async with scraper:
        while True:
            pending = [
                u for u, d in zip(urls, await done.contains_many(urls), strict=True) if not d
            ]
            if not pending:
                break
            tasks = []
            for i in range(0, len(pending), chunk):
                await batches.acquire()
                tasks.append(asyncio.ensure_future(run_chunk(pending[i : i + chunk])))
            if not sum(await asyncio.gather(*tasks)):
                await asyncio.sleep(0.1)  # others hold the rest, or a dead worker's claims expire
    out.write(json.dumps({"stats": attrs.asdict(limiter.stats())}) + "\n")
    out.close()
    await limiter.close()
    await claims.close()
    await done.close()


async def _run_inflight(config: dict[str, Any]) -> None:
    """Fetch the same URLs as every other worker, through InflightCache on a shared cache."""
    from leadperf import AsyncScraper
    from leadperf.cache import from_url
    from leadperf.scale import InflightCache

    cache = from_url(config["cache_url"], namespace=config["name"])
    inflight = InflightCache(cache, wait=float(config["wait"]))
    async with AsyncScraper(cache=inflight, max_concurrent=50) as scraper:
        await asyncio.sleep(max(0.0, float(config["start_at"]) - time.monotonic()))
        results = await scraper.scrape_batch(config["urls"])
    with open(config["out"], "w", encoding="utf-8") as out:
        for r in results:
            out.write(json.dumps({"url": r.url, "ok": r.ok, "from_cache": r.from_cache}) + "\n")
        out.write(json.dumps({"stats": {"shared_hits": inflight.shared_hits}}) + "\n")
    await cache.close()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    asyncio.run(_run_inflight(config) if config.get("mode") == "inflight" else _run(config))


if __name__ == "__main__":
    main()
