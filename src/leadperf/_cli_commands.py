"""The ``leadperf`` commands that do work of their own: benchmark, monitor, scrape,
migrate-cache, archive, settings and profiles (the parser lives in :mod:`leadperf.cli`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ._core.stats import percentile
from ._util import mask_url
from .config import Settings
from .errors import ConfigError, LeadperfError

if TYPE_CHECKING:
    from .optimize.optimizer import PerformanceOptimizer

__all__ = ["archive", "benchmark", "migrate_cache", "monitor", "profiles", "scrape", "settings"]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def settings(s: Settings, args: argparse.Namespace) -> int:
    """Print the effective settings, URL passwords masked."""
    _out(json.dumps(s.as_dict(), indent=2, sort_keys=True, default=str))
    return 0


def profiles(s: Settings, args: argparse.Namespace) -> int:
    """Print each profile and its description."""
    from .optimize.profiles import PROFILES

    _out(json.dumps({name: p.description for name, p in PROFILES.items()}, indent=2))
    return 0


# -- benchmark ------------------------------------------------------------------------------


class _Bar:
    """A tqdm progress bar on stderr when tqdm is installed (the ``progress`` extra)."""

    def __init__(self, total: int, desc: str) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar: Any = None
        else:
            self._bar = tqdm(total=total, desc=desc, unit="op", file=sys.stderr, leave=False)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def benchmark(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    """Time cache set/get (and ``SELECT 1`` when a database is configured)."""
    n = args.iterations
    if n < 1:
        raise ConfigError(f"--iterations must be >= 1, got {n}")
    checks = await perf.check_backends()
    down = [f"{k}: {c['error']}" for k, c in checks.items() if c["configured"] and not c["ok"]]
    if down:
        raise LeadperfError("cannot benchmark, a backend is down: " + "; ".join(down))
    cache = perf.cache
    kinds = ["cache.set", "cache.get"] + (
        ["database.select_1"] if perf.settings.database.url else []
    )
    timings: dict[str, list[float]] = {k: [] for k in kinds}
    totals = dict.fromkeys(kinds, 0.0)
    errors_before = cache.stats().errors
    value = {"email": "lead@example.com", "score": 42, "note": "x" * 64}
    bar = _Bar(n * len(kinds), "benchmark")
    try:
        for kind in kinds:
            start = time.perf_counter()
            for i in range(n):
                t0 = time.perf_counter()
                if kind == "cache.set":
                    await cache.set(f"leadperf-bench:{i}", value, ttl=300)
                elif kind == "cache.get":
                    await cache.get(f"leadperf-bench:{i}")
                else:
                    await perf.database.fetch("SELECT 1 AS one")
                timings[kind].append((time.perf_counter() - t0) * 1000)
                bar.update()
            totals[kind] = time.perf_counter() - start
    finally:
        bar.close()
        await cache.clear("leadperf-bench:*")
    errors = cache.stats().errors - errors_before
    rows = []
    for kind in kinds:
        ordered = sorted(timings[kind])
        rows.append(
            {
                "operation": kind,
                "n": n,
                "p50_ms": round(percentile(ordered, 0.50), 4),
                "p95_ms": round(percentile(ordered, 0.95), 4),
                "p99_ms": round(percentile(ordered, 0.99), 4),
                "ops_per_s": round(n / totals[kind], 1) if totals[kind] else None,
            }
        )
    backend = checks["cache"]["backend"]
    if args.json_output:
        _out(json.dumps({"backend": backend, "results": rows, "errors": errors}))
    else:
        _benchmark_table(backend, n, rows)
    if errors:
        sys.stderr.write(f"leadperf: the cache counted {errors} errors during the run\n")
        return 1
    return 0


def _benchmark_table(backend: str, n: int, rows: list[dict[str, Any]]) -> None:
    _out(f"cache backend: {backend}, {n} iterations per operation")
    header = ("operation", "n", "p50 ms", "p95 ms", "p99 ms", "ops/s")
    table = [header] + [
        (r["operation"], r["n"], f"{r['p50_ms']:.4f}", f"{r['p95_ms']:.4f}",
         f"{r['p99_ms']:.4f}", f"{r['ops_per_s']:,.0f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        _out("  ".join(cells))


# -- monitor --------------------------------------------------------------------------------

_COLUMNS = (
    ("time", 8),
    ("cpu %", 6),
    ("mem %", 6),
    ("rss MB", 8),
    ("threads", 7),
    ("children", 8),
    ("child MB", 9),
)


async def monitor(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    """Sample until Ctrl-C or ``--samples``: a table on a terminal, JSON lines otherwise."""
    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be >= 0 (0: until Ctrl-C), got {args.samples}")
    tty = sys.stdout.isatty()
    mon = perf.monitor
    if tty:
        _out("  ".join(name.rjust(width) for name, width in _COLUMNS) + "   (Ctrl-C to stop)")
    taken = 0
    while args.samples == 0 or taken < args.samples:
        snap = await mon.sample_async()
        taken += 1
        if tty:
            clock = time.strftime("%H:%M:%S", time.localtime(snap.timestamp))
            values = (
                clock,
                f"{snap.cpu_percent:.1f}",
                f"{snap.memory_percent:.1f}",
                f"{snap.process_rss_mb:.1f}",
                snap.process_threads,
                snap.children,
                f"{snap.children_rss_mb:.1f}",
            )
            _out("  ".join(str(v).rjust(w) for v, (_, w) in zip(values, _COLUMNS, strict=True)))
        else:
            _out(json.dumps(attrs.asdict(snap)))
        sys.stdout.flush()
        if args.samples == 0 or taken < args.samples:
            await anyio.sleep(args.interval)
    return 0


# -- scrape, migrate-cache, archive ---------------------------------------------------------


async def scrape(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    """One JSON line per URL, in input order; exit 1 when any failed."""
    from .scraper import AsyncScraper

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
    failed = 0
    async with AsyncScraper(settings=perf.settings, max_concurrent=args.concurrency) as scraper:
        for result in await scraper.scrape_batch(list(args.urls)):
            failed += not result.ok
            line = {
                "url": result.url,
                "status_code": result.status_code,
                "ok": result.ok,
                "bytes": len(result.content or b""),
                "elapsed": result.elapsed,
                "attempts": result.attempts,
                "error": None if result.error is None else str(result.error),
            }
            _out(json.dumps(line))
    return 1 if failed else 0


async def migrate_cache(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    """Copy a SQLite cache file's live entries into the PostgreSQL cache."""
    from .cache import PostgresCache, migrate_sqlite

    s = perf.settings
    target = args.target
    if target is None and s.cache.url and s.cache.url.startswith(("postgresql:", "postgres:")):
        target = s.cache.url
    target = target or s.database.url
    if not target:
        raise ConfigError(
            "no PostgreSQL to migrate into: pass --to postgresql://... or set DATABASE_URL"
        )
    if not await anyio.Path(args.sqlite_path).is_file():
        raise ConfigError(f"SQLITE_PATH {args.sqlite_path!r} is not a file")
    async with PostgresCache(target, settings=s) as pg:
        copied = await migrate_sqlite(args.sqlite_path, pg, table=args.table)
    _out(f"Copied {copied} live entries from {args.sqlite_path} into {mask_url(target)}.")
    return 0


async def archive(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    """Run the archiver once on ``args.table``."""
    from .optimize.archive import Archiver

    if args.older_than_days < 0:
        raise ConfigError(f"--older-than-days must be >= 0, got {args.older_than_days}")
    archiver = Archiver(
        perf.database,
        args.table,
        timestamp_column=args.timestamp_column,
        interval=args.interval,
        archive_schema=args.archive_schema,
        schema=args.schema,
    )
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=args.older_than_days)
    report = await archiver.archive(cutoff)
    if not report.moved:
        _out(f"Nothing to archive before {report.cutoff:%Y-%m-%d %H:%M} UTC.")
        return 0
    for part in report.moved:
        _out(f"moved {part.name} ({part.rows} rows) to {report.archive_schema}")
    _out(f"{report.rows} rows in {len(report.moved)} partitions, {report.seconds:.2f}s.")
    return 0
