"""The engines a scraper test runs on, the default first."""

from __future__ import annotations

#: Every engine, the default first.
ENGINES = ["aiohttp", "httpx", "native"]
