"""The sync pattern for scripts: ``with PerformanceOptimizer(...) as perf:`` and every
part's blocking helpers (the same code works in a notebook cell).

Run: python3 examples/sync_script.py
"""

from __future__ import annotations

from _site import start_site

from leadperf import PerformanceOptimizer, Settings


def main() -> None:
    base = start_site()
    with PerformanceOptimizer(Settings.from_env()) as perf:
        perf.cache_sync.set("lead:42", {"email": "ada@example.com"}, ttl=3600)
        print("cache:", perf.cache_sync.get("lead:42"))
        results = perf.scraper.scrape_batch_sync([f"{base}/company/{i}" for i in range(10)])
        print("scraped:", sum(r.ok for r in results), "of", len(results))
        if perf.settings.database.url:
            print("database:", perf.database_sync.fetch("SELECT version() AS v")[0]["v"][:30])
        analysis = perf.run_performance_analysis_sync()
        print("hit rate:", analysis["cache_performance"]["hit_rate"])


if __name__ == "__main__":
    main()
