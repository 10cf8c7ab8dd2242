"""The ``leadperf`` command: inspect settings, analyse, export metrics, scrape a list.

A thin front end over :class:`~leadperf.optimize.PerformanceOptimizer`; no logic of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import attrs

from .config import Settings
from .errors import LeadperfError

__all__ = ["main"]


def _load_settings(args: argparse.Namespace) -> Settings:
    if args.config:
        return Settings.from_yaml(args.config, profile=args.profile)
    return Settings.from_env(profile=args.profile)


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


async def _analyze(settings: Settings) -> dict[str, Any]:
    from .optimize.optimizer import PerformanceOptimizer

    async with PerformanceOptimizer(settings) as perf:
        return await perf.run_performance_analysis()


async def _metrics(settings: Settings) -> str:
    from .optimize.optimizer import PerformanceOptimizer

    async with PerformanceOptimizer(settings) as perf:
        await perf.monitor.sample_async()
        perf.registry.register("system", perf.monitor.latest_or_sample)
        return perf.registry.to_prometheus()


async def _monitor(settings: Settings, samples: int, interval: float) -> None:
    from .monitor import SystemMonitor

    mon = SystemMonitor(interval=interval, settings=settings)
    for i in range(samples):
        snap = await mon.sample_async()
        _dump(attrs.asdict(snap))
        if i + 1 < samples:
            await anyio.sleep(interval)


async def _scrape(settings: Settings, urls: list[str], concurrency: int | None) -> int:
    from .scraper import AsyncScraper

    failed = 0
    async with AsyncScraper(settings=settings, max_concurrent=concurrency) as scraper:
        for result in await scraper.scrape_batch(urls):
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
            sys.stdout.write(json.dumps(line) + "\n")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadperf", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML settings file (a 'performance:' mapping)")
    parser.add_argument("--profile", help="tuning profile to start from")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="print the effective settings as JSON (passwords masked)")
    sub.add_parser("profiles", help="list the tuning profiles")
    sub.add_parser("analyze", help="run a performance analysis and print it as JSON")
    sub.add_parser("metrics", help="print metrics in Prometheus text format")
    mon = sub.add_parser("monitor", help="print system samples as JSON lines")
    mon.add_argument("--samples", type=int, default=5)
    mon.add_argument("--interval", type=float, default=1.0)
    scrape = sub.add_parser("scrape", help="fetch URLs and print one JSON line per result")
    scrape.add_argument("urls", nargs="+")
    scrape.add_argument("--concurrency", type=int, default=None, help="per-platform limit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 on bad input, 1 on failures)."""
    args = _parser().parse_args(argv)
    try:
        settings = _load_settings(args)
        if args.command == "settings":
            _dump(settings.as_dict())
        elif args.command == "profiles":
            from .optimize.profiles import PROFILES

            _dump({name: p.description for name, p in PROFILES.items()})
        elif args.command == "analyze":
            _dump(anyio.run(_analyze, settings))
        elif args.command == "metrics":
            sys.stdout.write(anyio.run(_metrics, settings))
        elif args.command == "monitor":
            if args.samples < 1 or args.interval <= 0:
                raise LeadperfError("--samples must be >= 1 and --interval > 0")
            anyio.run(_monitor, settings, args.samples, args.interval)
        elif args.command == "scrape":
            code: int = anyio.run(_scrape, settings, list(args.urls), args.concurrency)
            return code
    except LeadperfError as exc:
        sys.stderr.write(f"leadperf: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
