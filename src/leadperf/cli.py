"""The ``leadperf`` command (also installed as ``bi-performance``; ``python -m leadperf``).

A thin front end over :class:`~leadperf.optimize.PerformanceOptimizer`: every command
builds one optimizer from the settings (``--config``/``--profile`` or the environment),
asks it, prints, and closes it. Exit codes: 0 ok, 1 failure (a backend down, a failed
run), 2 usage (bad arguments or settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .config import Settings
from .errors import ConfigError, LeadperfError

if TYPE_CHECKING:
    from .optimize.optimizer import PerformanceOptimizer

__all__ = ["main"]

PROG = "leadperf"
_GLOBALS = ("config", "profile", "log_level")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leadperf")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


class _Usage(Exception):
    """A usage problem found after parsing: one line, exit code 2."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _dump(data: Any) -> None:
    _out(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        left = row[0].ljust(widths[0])
        _out("  ".join([left] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(round(value, 3), "f").rstrip("0").rstrip(".") or "0"
    return "-" if value is None else str(value)


# -- commands -------------------------------------------------------------------------------


async def _status(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    st = await perf.status()
    if args.json_output:
        _dump(st)
        return 0 if st["ok"] else 1
    mem, proc = st["memory"], st["process"]
    container = (
        f"{mem['container_used_mb']:.1f} of {mem['container_limit_mb']:.1f} MB"
        if mem["container_limit_mb"]
        else "no memory limit"
    )
    lines = [
        ("Profile", st["profile"]),
        ("CPU", f"{st['cpu_percent']:.1f} %"),
        (
            "Memory",
            f"{mem['percent']:.1f} % used ({mem['used_mb']:.0f} MB used, "
            f"{mem['available_mb']:.0f} MB available)",
        ),
        ("Container", container),
        ("Process", f"{proc['rss_mb']:.1f} MB RSS, {proc['threads']} threads"),
        ("Browsers", f"{proc['children']} child processes, {proc['children_rss_mb']:.1f} MB"),
    ]
    for name, check in st["backends"].items():
        if not check["configured"]:
            state = "not configured"
        elif check["ok"]:
            state = f"{check['backend']}: ok ({check['latency_ms']:.1f} ms)"
        else:
            state = f"{check['backend']}: DOWN ({check['error']})"
        lines.append((name.capitalize(), state))
    for label, value in lines:
        _out(f"{label:<10} {value}")
    return 0 if st["ok"] else 1


async def _metrics(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    if args.prometheus:
        sys.stdout.write(await perf.metrics_prometheus())
        return 0
    data = await perf.metrics()
    if args.json_output:
        _dump(data)
        return 0
    for source, metrics in data.items():
        _out(f"[{source}]")
        for name, value in sorted(metrics.items()):
            _out(f"  {name:<32} {_fmt(value)}")
    return 0


async def _optimize(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    result = await perf.apply_optimizations(args.profile_name)
    if args.json_output:
        _dump(result)
        return 0
    _out(f"Profile {result['previous_profile']} -> {result['profile_applied']}")
    _out(
        f"GC thresholds {tuple(result['previous_gc_thresholds'])} -> "
        f"{tuple(result['gc_thresholds'])}"
    )
    rows = [(key, old, new) for key, (old, new) in sorted(result["changes"].items())]
    if rows:
        _table(rows, ("setting", "before", "after"))
    else:
        _out("No setting changes.")
    _out(
        f"This process now runs {result['profile_applied']}. To make it the default, set "
        f"LEADPERF_PROFILE={result['profile_applied']} (or 'profile:' in the YAML file); a "
        f"running service switches with POST /performance/optimize/{result['profile_applied']}."
    )
    return 0


async def _clear_cache(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    if args.pattern is None and not args.yes:
        if not sys.stdin.isatty():
            raise _Usage("clearing every key needs confirmation: pass --yes (or --pattern P)")
        namespace = getattr(perf.cache, "namespace", "leadperf")
        sys.stderr.write(f"Remove every key in namespace {namespace!r}? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            _out("Nothing removed.")
            return 1
    try:
        removed = await perf.clear_cache(args.pattern)
    except ValueError as exc:  # a bad pattern (CacheKeyError): usage
        raise _Usage(str(exc)) from None
    what = f"matching {args.pattern!r}" if args.pattern else "in the namespace"
    _out(f"Removed {removed} keys {what}.")
    return 0


async def _recommendations(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    recs = await perf.recommendations()
    if args.json_output:
        _dump([r.as_dict() for r in recs])
        return 0
    if not recs:
        _out("No recommendations: every figure is within its rule's bounds.")
    for r in recs:
        figure = f" [{r.metric} = {_fmt(r.value)}]" if r.metric else ""
        _out(f"{r.severity.upper():<8} {r.area:<9} {r.message}{figure}")
        if r.setting:
            _out(f"{'':<18} suggested: {r.setting} = {r.suggested}")
    return 0


async def _analyze(perf: PerformanceOptimizer, args: argparse.Namespace) -> int:
    _dump(await perf.run_performance_analysis())
    return 0


# -- parser ---------------------------------------------------------------------------------

Command = Callable[["PerformanceOptimizer", argparse.Namespace], Awaitable[int]]


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options on the main parser and every subcommand, so they work before or
    # after it; a subcommand's copy defaults to SUPPRESS so it never hides the main one.
    default: Any = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("global options")
    g.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help="YAML settings file with a 'performance:' mapping (default: "
        "$LEADPERF_CONFIG, else config/performance.yaml when present)",
    )
    g.add_argument(
        "--profile",
        default=default,
        choices=("balanced", "memory_focused", "performance_focused"),
        help="tuning profile to start from",
    )
    g.add_argument(
        "--log-level", default=default, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )


def _sub(
    sub: Any, name: str, help: str, example: str, func: Any, *, direct: bool = False
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _globals(p, top=False)
    p.set_defaults(func=func, direct=direct)
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json-output", action="store_true", help="print JSON instead of text")


def _parser() -> argparse.ArgumentParser:
    # One declarative list of every command, its help, example and flags: long, but read
    # top to bottom like the --help it produces; splitting it would scatter the commands.
    from . import _cli_commands as more

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, tune and exercise leadperf: status, metrics, profiles, cache, "
        "benchmarks, monitoring, scraping.",
        epilog="example:\n  leadperf status\n  leadperf --profile memory_focused metrics "
        "--json-output",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    _globals(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(
        sub,
        "status",
        "system, process and browser memory, backend checks; exit 1 when "
        "a configured backend is down",
        "leadperf status",
        _status,
    )
    _json_flag(p)
    p = _sub(
        sub,
        "metrics",
        "every part's metrics (text, JSON or Prometheus)",
        "leadperf metrics --prometheus | grep cache",
        _metrics,
    )
    _json_flag(p)
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition")
    p = _sub(
        sub,
        "optimize",
        "apply a tuning profile and print what changed",
        "leadperf optimize performance_focused",
        _optimize,
    )
    p.add_argument(
        "profile_name",
        metavar="PROFILE",
        choices=("balanced", "memory_focused", "performance_focused"),
        help="balanced, memory_focused or performance_focused",
    )
    _json_flag(p)
    p = _sub(
        sub,
        "clear-cache",
        "remove keys from the configured cache (inside its namespace)",
        "leadperf clear-cache --pattern 'lead:*'",
        _clear_cache,
    )
    p.add_argument("--pattern", help="glob of keys to remove (* and ?); default: all")
    p.add_argument("--yes", action="store_true", help="do not ask before removing every key")
    p = _sub(
        sub,
        "benchmark",
        "time cache set/get (and the database when configured)",
        "leadperf benchmark --iterations 2000",
        more.benchmark,
    )
    p.add_argument("--iterations", type=int, default=1000, help="operations per kind")
    _json_flag(p)
    p = _sub(
        sub,
        "recommendations",
        "what to change, with the figure behind each advice",
        "leadperf recommendations",
        _recommendations,
    )
    _json_flag(p)
    p = _sub(
        sub,
        "monitor",
        "live system view until Ctrl-C (JSON lines when piped)",
        "leadperf monitor --interval 2 --samples 30 > samples.jsonl",
        more.monitor,
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--samples", type=int, default=0, help="stop after N samples (0: never)")
    _sub(
        sub,
        "settings",
        "the effective settings as JSON (passwords masked)",
        "LEADPERF_PROFILE=memory_focused leadperf settings",
        more.settings,
        direct=True,
    )
    _sub(
        sub,
        "profiles",
        "the tuning profiles and what they are for",
        "leadperf profiles",
        more.profiles,
        direct=True,
    )
    _sub(
        sub,
        "analyze",
        "a full performance analysis as JSON",
        "leadperf analyze > analysis.json",
        _analyze,
    )
    p = _sub(
        sub,
        "scrape",
        "fetch URLs and print one JSON line per result; exit 1 if any failed",
        "leadperf scrape https://example.com/a https://example.com/b",
        more.scrape,
    )
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--concurrency", type=int, default=None, help="per-platform limit")
    p = _sub(
        sub,
        "migrate-cache",
        "copy a SQLite cache file into the PostgreSQL cache",
        "DATABASE_URL=postgresql://app@db/app leadperf migrate-cache cache.db",
        more.migrate_cache,
    )
    p.add_argument("sqlite_path", metavar="SQLITE_PATH")
    p.add_argument(
        "--to",
        dest="target",
        help="PostgreSQL URL (default: LEADPERF_CACHE_URL "
        "when it is postgresql://, else DATABASE_URL)",
    )
    p.add_argument("--table", default="leadperf_cache", help="SQLite table to read")
    p = _sub(
        sub,
        "archive",
        "move partitions older than a cutoff to the archive schema, once",
        "leadperf archive events --older-than-days 365",
        more.archive,
    )
    p.add_argument("table")
    p.add_argument("--older-than-days", type=int, required=True)
    p.add_argument("--timestamp-column", default="created_at")
    p.add_argument("--interval", choices=("month", "day"), default="month")
    p.add_argument("--schema", default="public")
    p.add_argument("--archive-schema", default="archive")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.config:
        return Settings.from_yaml(args.config, profile=args.profile, **overrides)
    return Settings.from_env(profile=args.profile, **overrides)


async def _run(func: Command, settings: Settings, args: argparse.Namespace) -> int:
    from .optimize.optimizer import PerformanceOptimizer

    # Parts open lazily, so a command that only checks the backends still runs (and
    # reports) when one of them is down.
    perf = PerformanceOptimizer(settings)
    try:
        return await func(perf, args)
    finally:
        with anyio.CancelScope(shield=True):
            await perf.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        settings = _settings(args)
        if getattr(args, "direct", False):
            code: int = args.func(settings, args)
        else:
            code = anyio.run(_run, args.func, settings, args)
        sys.stdout.flush()
        return code
    except (ConfigError, _Usage) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except LeadperfError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python's exit-time flush
        # of stdout from failing on the closed pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 0 if getattr(args, "command", None) == "monitor" else 130


def run() -> None:  # pragma: no cover - console-script entry point
    """Entry point of the ``leadperf``/``bi-performance`` scripts."""
    raise SystemExit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
