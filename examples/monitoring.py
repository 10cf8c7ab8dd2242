"""Monitoring and tuning: status with real backend checks, metrics, recommendations,
a profile switch that reaches the parts already open.

Run: python3 examples/monitoring.py   (REDIS_URL / DATABASE_URL are checked when set)
"""

from __future__ import annotations

import anyio

from leadperf import PerformanceOptimizer, Settings


async def main() -> None:
    async with PerformanceOptimizer(Settings.from_env()) as perf:
        status = await perf.status()
        print("ok:", status["ok"], {k: v["ok"] for k, v in status["backends"].items()})
        for i in range(200):
            await perf.cache.get(f"never-set-{i}")  # a cold cache: the hit-rate rule fires
        for rec in await perf.recommendations():
            print(f"{rec.severity}: {rec.message} [{rec.metric} = {rec.value}]")
        result = await perf.apply_optimizations("memory_focused")
        for part, change in result["parts"].items():
            print(f"{part}: live {change['live']} / on reopen {list(change['on_reopen'])}")
        text = await perf.metrics_prometheus()
        print(text.splitlines()[0], "...", len(text.splitlines()), "lines of Prometheus text")


if __name__ == "__main__":
    anyio.run(main)
