"""leadperf: make Python scraping and lead-intelligence apps fast at bulk scale.

Public names are re-exported here and load lazily, so ``import leadperf`` pulls in no
optional dependency (redis, psycopg, selenium, PIL, fastapi) until a part is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._core.lazy import lazy_exports as _lazy_exports
from .config import Settings
from .errors import (
    BrowserCrashedError,
    BrowserStartError,
    BulkUpsertError,
    CacheError,
    CacheKeyError,
    CacheUnavailableError,
    ClosedError,
    CompressionError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    HTTPStatusError,
    ImageError,
    InvalidResponseError,
    InvalidURLError,
    LeadperfError,
    MissingDependencyError,
    PoolError,
    PoolExhaustedError,
    ResponseTooLargeError,
    RowValueError,
    ScrapeConnectionError,
    ScrapeError,
    ScrapeTimeoutError,
    SerializationError,
    TaskQueueFullError,
    TooManyRedirectsError,
    UnsafeRequestError,
    ValueTooLargeError,
)

if TYPE_CHECKING:
    from .cache import cached
    from .optimize import PerformanceOptimizer, get_performance_optimizer
    from .pool import ChromePool, get_chrome_pool
    from .scraper import AsyncScraper, RetryPolicy, ScrapeResult

__version__ = "0.1.0"

__all__ = [
    "AsyncScraper",
    "BrowserCrashedError",
    "BrowserStartError",
    "BulkUpsertError",
    "CacheError",
    "CacheKeyError",
    "CacheUnavailableError",
    "ChromePool",
    "ClosedError",
    "CompressionError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "HTTPStatusError",
    "ImageError",
    "InvalidResponseError",
    "InvalidURLError",
    "LeadperfError",
    "MissingDependencyError",
    "PerformanceOptimizer",
    "PoolError",
    "PoolExhaustedError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "RowValueError",
    "ScrapeConnectionError",
    "ScrapeError",
    "ScrapeResult",
    "ScrapeTimeoutError",
    "SerializationError",
    "Settings",
    "TaskQueueFullError",
    "TooManyRedirectsError",
    "UnsafeRequestError",
    "ValueTooLargeError",
    "__version__",
    "cached",
    "get_chrome_pool",
    "get_performance_optimizer",
]

_LAZY: dict[str, str] = {
    "AsyncScraper": ".scraper",
    "RetryPolicy": ".scraper",
    "ScrapeResult": ".scraper",
    "ChromePool": ".pool",
    "get_chrome_pool": ".pool",
    "cached": ".cache",
    "PerformanceOptimizer": ".optimize",
    "get_performance_optimizer": ".optimize",
}

__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
