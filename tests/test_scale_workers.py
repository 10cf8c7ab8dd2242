"""Many worker processes share limits and dedup through Redis and PostgreSQL.

Four real worker processes (tests/scale_worker.py) fetch from a recording server on
127.0.0.1; the assertions read what the server saw, what Redis holds and which URLs the
workers report, never the limiter's own opinion of itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from scale_worker import OwnRedis, read_output, start_worker
from scrape_server import ScrapeServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

LIMITS = (2, 3, 4, 5)
DELAY = 0.015  # seconds between two requests to one platform, across every worker
ANSWER = 0.06  # seconds the server takes per answer, so requests overlap


def _urls(server: ScrapeServer, n: int, platforms: int, tag: str) -> list[str]:
    """``n`` URLs spread over the platforms in proportion to their limits."""
    weights = LIMITS[:platforms]
    cycle = [p for p, w in enumerate(weights) for _ in range(w)]
    return [
        server.url(cycle[i % len(cycle)], f"/page/{tag}-{i}?size=64&delay={ANSWER}")
        for i in range(n)
    ]


def _config(server: ScrapeServer, urls: list[str], platforms: int, **over: Any) -> dict[str, Any]:
    config = {
        "urls": urls,
        "limits": {server.platform(i): LIMITS[i] for i in range(platforms)},
        "delay": DELAY,
        "lease": 10.0,
        "ttl": 60.0,
        "chunk": 40,
    }
    config.update(over)
    return config


def _run(tmp: Path, config: dict[str, Any], n: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for w in range(n):
        cfg = {**config, "out": str(tmp / f"w{w}.jsonl")}
        procs.append(start_worker(cfg, str(tmp / f"w{w}.json")))
    return procs


def _wait(procs: list[subprocess.Popen[bytes]], tmp: Path, deadline: float) -> None:
    for i, proc in enumerate(procs):
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            err = (tmp / f"w{i}.json.err").read_text(errors="replace")[-2000:]
            pytest.fail(f"worker {i} did not finish in time; stderr tail:\n{err}")


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _gaps(server: ScrapeServer, index: int) -> list[float]:
    times = sorted(t for t, _ in server.arrivals(index))
    return [b - a for a, b in itertools.pairwise(times)]


def _median_gap_ms(server: ScrapeServer, index: int) -> float:
    gaps = sorted(_gaps(server, index))
    return round(gaps[len(gaps) // 2] * 1000, 1)


def _max_in_window(server: ScrapeServer, index: int, width: float) -> int:
    """The most arrivals at one platform within any ``width`` seconds."""
    times = sorted(t for t, _ in server.arrivals(index))
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        most = max(most, end - start + 1)
    return most


def _worker_id(path: Path) -> str:
    with path.open(encoding="utf-8") as f:
        return str(json.loads(f.readline())["worker"])


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_four_workers_share_limits_spacing_and_dedup(
    tmp_path: Path, redis_url: str, unique_name: str, reliability: Any
) -> None:
    with ScrapeServer(ports=4) as server:
        urls = _urls(server, 2000, 4, unique_name)
        config = _config(
            server,
            urls,
            4,
            limiter_url=redis_url,
            dedup_url=redis_url,
            prefix=f"{unique_name}:limit",
            name=unique_name,
        )
        started = time.monotonic()
        procs = _run(tmp_path, config, 4)
        try:
            _wait(procs, tmp_path, started + 90)
        finally:
            _kill_all(procs)
        took = time.monotonic() - started
        assert [p.returncode for p in procs] == [0, 0, 0, 0]

        hits = Counter(target for _, target in server.arrivals())
        assert len(hits) == 2000
        assert set(hits.values()) == {1}, "each URL fetched exactly once"
        fetched = [
            row["url"] for w in range(4) for row in read_output(str(tmp_path / f"w{w}.jsonl"))[0]
        ]
        assert sorted(fetched) == sorted(urls)
        per_worker = Counter(
            row["pid"] for w in range(4) for row in read_output(str(tmp_path / f"w{w}.jsonl"))[0]
        )
        assert len(per_worker) == 4, f"every worker took a share: {per_worker}"

        for i, limit in enumerate(LIMITS):
            assert server.max_concurrency(i) <= limit, (i, server.max_concurrency(i), limit)
            # Spacing is scheduled by the senders and timed by the server's loop, both on a
            # loaded machine, so single gaps jitter; the rate over any 25 spacings must hold.
            window = _max_in_window(server, i, 25 * DELAY)
            assert window <= 25 + 2, (i, window)
            times = sorted(t for t, _ in server.arrivals(i))
            assert times[-1] - times[0] >= DELAY * (len(times) - 1) * 0.95
        assert max(server.max_concurrency(i) for i in range(4)) >= 3, "requests really overlapped"
        stats = [read_output(str(tmp_path / f"w{w}.jsonl"))[1] for w in range(4)]
        assert all(s is not None and s["shared"] and s["local_acquires"] == 0 for s in stats)
        reliability.record(
            "scale",
            "4 worker processes, 2,000 URLs over 4 platforms (limits 2-5, 15 ms spacing)",
            "no platform above its limit across workers, spacing held, each URL fetched once",
            f"server max in flight {[server.max_concurrency(i) for i in range(4)]} for limits "
            f"{list(LIMITS)}; most arrivals in any 0.375 s per platform "
            f"{[_max_in_window(server, i, 25 * DELAY) for i in range(4)]} "
            "(15 ms spacing allows 25); "
            f"median gap {[_median_gap_ms(server, i) for i in range(4)]} ms; "
            f"2,000 distinct URLs each hit once; {took:.1f} s",
        )


def test_sigkilled_worker_frees_its_slots_and_others_finish(
    tmp_path: Path, redis_url: str, unique_name: str, reliability: Any
) -> None:
    import redis

    lease = 1.5
    with ScrapeServer(ports=2) as server:
        urls = _urls(server, 400, 2, unique_name)
        prefix = f"{unique_name}:limit"
        config = _config(
            server,
            urls,
            2,
            limiter_url=redis_url,
            dedup_url=redis_url,
            prefix=prefix,
            name=unique_name,
            lease=lease,
            ttl=8.0,
            chunk=10,
        )
        procs = _run(tmp_path, config, 4)
        client = redis.Redis.from_url(redis_url)
        slot_keys = [f"{prefix}:{{{server.platform(i)}}}:slots" for i in range(2)]
        try:
            victim_out = tmp_path / "w0.jsonl"
            _wait_for(lambda: victim_out.exists() and victim_out.stat().st_size > 0, 20, "worker 0")
            victim = _worker_id(victim_out)

            def victim_tokens() -> list[bytes]:
                # Without decode_responses the client returns bytes; redis-py types
                # every reply as a union of all reply shapes.
                return [
                    t
                    for key in slot_keys
                    for t in cast("list[bytes]", client.zrange(key, 0, -1))
                    if t.startswith(victim.encode() + b":")
                ]

            _wait_for(lambda: server.total_hits >= 60 and victim_tokens(), 30, "victim holds slots")
            procs[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            held_at_kill = len(victim_tokens())
            _wait_for(
                lambda: not victim_tokens(), lease + 2.0, "the dead worker's leases to expire"
            )
            freed_after = time.monotonic() - killed_at
            _wait(procs[1:], tmp_path, time.monotonic() + 60)
        finally:
            _kill_all(procs)
            client.delete(*slot_keys, *(k.replace(":slots", ":state") for k in slot_keys))
            client.close()
        assert procs[0].returncode == -signal.SIGKILL
        assert [p.returncode for p in procs[1:]] == [0, 0, 0]
        assert held_at_kill >= 1
        assert freed_after <= lease + 0.5
        hits = Counter(target for _, target in server.arrivals())
        missing = {"/" + u.split("/", 3)[3] for u in urls} - set(hits)
        assert len(hits) == 400
        assert not missing, "every URL fetched despite the dead worker"
        for i, limit in enumerate(LIMITS[:2]):
            assert server.max_concurrency(i) <= limit
        reliability.record(
            "scale",
            "worker SIGKILLed mid-run while holding shared slots (lease 1.5 s)",
            "its slots come back within the lease; the other workers fetch every URL",
            f"{held_at_kill} slot(s) held at kill, free again after {freed_after:.2f} s; "
            f"400/400 URLs fetched, {sum(hits.values()) - 400} twice (fetched by the killed "
            "worker but not yet marked done); max in flight "
            f"{[server.max_concurrency(i) for i in range(2)]} "
            f"for limits {list(LIMITS[:2])}",
        )


def test_redis_stopped_mid_run_workers_continue_on_local_limits(
    tmp_path: Path, database_url: str, unique_name: str, reliability: Any
) -> None:
    import psycopg

    own = OwnRedis().start()
    with contextlib.ExitStack() as stack:
        stack.callback(own.close)
        server = stack.enter_context(ScrapeServer(ports=4))
        urls = _urls(server, 800, 4, unique_name)
        config = _config(
            server,
            urls,
            4,
            limiter_url=own.url,
            dedup_url=database_url,
            prefix="limit",
            name=unique_name,
        )
        procs = _run(tmp_path, config, 4)
        try:
            _wait_for(lambda: server.total_hits >= 150, 30, "the run to get going")
            before = [server.max_concurrency(i) for i in range(4)]
            own.stop()
            stopped_at = server.total_hits
            _wait(procs, tmp_path, time.monotonic() + 60)
        finally:
            _kill_all(procs)
            own.close()
            with psycopg.connect(database_url, autocommit=True) as conn:
                for suffix in ("_c", "_d"):
                    conn.execute(f"DROP TABLE IF EXISTS leadperf_dedup_{unique_name}{suffix}")
        assert [p.returncode for p in procs] == [0, 0, 0, 0]
        hits = Counter(target for _, target in server.arrivals())
        assert len(hits) == 800
        assert set(hits.values()) == {1}, "no URL lost or fetched twice"
        assert stopped_at < 800, "Redis was stopped while work remained"
        stats = [read_output(str(tmp_path / f"w{w}.jsonl"))[1] for w in range(4)]
        assert all(s is not None for s in stats)
        assert all(s["fallbacks"] >= 1 and not s["shared"] for s in stats if s)
        local = sum(s["local_acquires"] for s in stats if s)
        assert local > 0
        errs = [(tmp_path / f"w{w}.json.err").read_text() for w in range(4)]
        assert all("using local per-worker limits" in e for e in errs)
        for i, limit in enumerate(LIMITS):
            assert before[i] <= limit
            assert server.max_concurrency(i) <= 4 * limit, "each worker kept its own limit"
        reliability.record(
            "scale",
            "the limiter's Redis stopped mid-run (4 workers, 800 URLs, dedup on PostgreSQL)",
            "workers fall back to local per-worker limits, say so, and lose no URL",
            f"Redis killed after {stopped_at} of 800 URLs; every worker logged the fallback and "
            f"finished ({local} local acquires); 800/800 URLs fetched once; max in flight "
            f"{[server.max_concurrency(i) for i in range(4)]} (limits {list(LIMITS)}, "
            "4 workers)",
        )


def test_workers_wait_for_a_url_another_worker_is_fetching(
    tmp_path: Path, redis_url: str, unique_name: str, reliability: Any
) -> None:
    with ScrapeServer(ports=1) as server:
        urls = [server.url(0, f"/page/{unique_name}-{i}?size=128&delay=0.5") for i in range(20)]
        config = {
            "mode": "inflight",
            "urls": urls,
            "cache_url": redis_url,
            "name": unique_name,
            "wait": 10.0,
            "start_at": time.monotonic() + 4.0,  # all three start together, imports done
        }
        procs = _run(tmp_path, config, 3)
        try:
            _wait(procs, tmp_path, time.monotonic() + 60)
        finally:
            _kill_all(procs)
        hits = Counter(target for _, target in server.arrivals())
    assert [p.returncode for p in procs] == [0, 0, 0]
    rows = [read_output(str(tmp_path / f"w{w}.jsonl"))[0] for w in range(3)]
    assert all(len(r) == 20 and all(row["ok"] for row in r) for r in rows)
    assert len(hits) == 20
    assert set(hits.values()) == {1}, "each URL fetched by one worker; the others waited"
    shared = sum(row["from_cache"] for r in rows for row in r)
    assert shared == 40
    reliability.record(
        "scale",
        "3 worker processes fetch the same 20 slow URLs (0.5 s each) at the same moment",
        "a URL being fetched elsewhere is waited for through the shared cache, not refetched",
        f"server hits per URL {sorted(set(hits.values()))}; {shared} of 60 results came from "
        "another worker's fetch",
    )
