"""Quick start on the embedded defaults: memory cache, no server needed.

Serves a few pages from a local HTTP server on 127.0.0.1, scrapes them twice through
the PerformanceOptimizer (the second pass is served by the cache), and prints what
happened. Run: python3 examples/quickstart.py
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio

from leadperf import PerformanceOptimizer, Settings


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"<html><title>{self.path}</title><body>lead page {self.path}</body></html>"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/company/{i}" for i in range(20)]

    settings = Settings(profile="balanced")
    try:
        async with PerformanceOptimizer(settings) as perf:
            await perf.cache.set("lead:42", {"email": "ada@example.com", "score": 0.93}, ttl=3600)
            print("cached lead:", await perf.cache.get("lead:42"))

            first = await perf.scraper.scrape_batch(urls)
            again = await perf.scraper.scrape_batch(urls)
            print(
                f"scraped {sum(r.ok for r in first)}/{len(urls)} pages;",
                f"second pass from cache: {sum(r.from_cache for r in again)}/{len(urls)}",
            )
            print("first page:", first[0].status_code, first[0].text[:60])

            analysis = await perf.run_performance_analysis()
            print(f"cache hit rate: {analysis['cache_performance']['hit_rate']:.2f}")
            for rec in analysis["recommendations"]:
                print("recommendation:", rec["message"])
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    anyio.run(main)
