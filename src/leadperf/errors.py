"""Exceptions raised by leadperf.

Every error leadperf raises on purpose derives from :class:`LeadperfError` and also from
the matching builtin, so ``except TimeoutError`` keeps working in host code::

    LeadperfError
    ├── ConfigError (ValueError)               bad setting, argument or URL
    │   └── RowValueError                       a bulk_upsert value; carries .row and .column
    ├── MissingDependencyError (ImportError)   an optional extra is not installed
    ├── ClosedError (RuntimeError)             the resource was closed and cannot reopen
    ├── CacheError
    │   ├── CacheUnavailableError (ConnectionError)   server unreachable
    │   ├── CacheKeyError (ValueError)                key not a str, empty or too long
    │   └── SerializationError (TypeError)            value the codec cannot encode/decode
    │       └── ValueTooLargeError                    value over the cache's size limit
    ├── ScrapeError                             carries .url and .attempt
    │   ├── InvalidURLError (ValueError)
    │   ├── ScrapeTimeoutError (TimeoutError)
    │   ├── ScrapeConnectionError (ConnectionError)
    │   │   └── InvalidResponseError            malformed or conflicting response framing
    │   ├── ResponseTooLargeError               body, decoded size, head or header count too big
    │   ├── TooManyRedirectsError               redirect loop or chain over the limit (not retried)
    │   ├── UnsafeRequestError (ValueError)     control bytes or a non-token in what would be sent
    │   └── HTTPStatusError                     carries .status_code
    ├── PoolError
    │   ├── PoolExhaustedError (TimeoutError)   every instance busy past the timeout
    │   ├── BrowserCrashedError                 the browser died or hung mid-task
    │   └── BrowserStartError                   Chrome/chromedriver would not start
    ├── ImageError (ValueError)                 empty, corrupt, too large or unsupported image
    ├── CompressionError (ValueError)           compressed text corrupt, truncated or too large
    ├── TaskQueueFullError                      the task queue holds max_queued items
    └── DatabaseError
        ├── DatabaseUnavailableError (ConnectionError)
        └── BulkUpsertError                     carries .batch (index) and .table

Messages say what was wrong and what to do; they never contain credentials.
"""

from __future__ import annotations

__all__ = [
    "BrowserCrashedError",
    "BrowserStartError",
    "BulkUpsertError",
    "CacheError",
    "CacheKeyError",
    "CacheUnavailableError",
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
    "PoolError",
    "PoolExhaustedError",
    "ResponseTooLargeError",
    "RowValueError",
    "ScrapeConnectionError",
    "ScrapeError",
    "ScrapeTimeoutError",
    "SerializationError",
    "TaskQueueFullError",
    "TooManyRedirectsError",
    "UnsafeRequestError",
    "ValueTooLargeError",
]


class LeadperfError(Exception):
    """Root of every error leadperf raises on purpose."""


class ConfigError(LeadperfError, ValueError):
    """A setting, argument or URL is invalid; the message names the key and the problem."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RowValueError(ConfigError):
    """A value :meth:`DatabaseOptimizer.bulk_upsert` refuses before writing anything;
    ``row`` (index in the given rows) and ``column`` say which."""

    def __init__(self, message: str, *, row: int, column: str) -> None:
        super().__init__(message, key="rows")
        self.row = row
        self.column = column


class MissingDependencyError(LeadperfError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'leadperf[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ClosedError(LeadperfError, RuntimeError):
    """The resource was closed; closed resources are never reopened. Create a new one."""


# -- caches -------------------------------------------------------------------------------


class CacheError(LeadperfError):
    """A cache operation failed."""


class CacheUnavailableError(CacheError, ConnectionError):
    """The cache's server cannot be reached. Check the URL and that the server runs."""


class CacheKeyError(CacheError, ValueError):
    """A cache key is not a non-empty ``str`` within the documented maximum length."""


class SerializationError(CacheError, TypeError):
    """A value cannot be encoded (or stored bytes cannot be decoded) by the cache codec."""


class ValueTooLargeError(SerializationError):
    """A value larger than the cache accepts for one entry (``max_value_size``, a
    MemoryCache's share of ``max_bytes``, the codec's ``max_decoded_size``); raised at
    ``set`` before anything is written."""


# -- scraper ------------------------------------------------------------------------------


class ScrapeError(LeadperfError):
    """Fetching a URL failed; ``url`` and ``attempt`` say which and when."""

    def __init__(self, message: str, *, url: str | None = None, attempt: int = 0) -> None:
        super().__init__(message)
        self.url = url
        self.attempt = attempt


class InvalidURLError(ScrapeError, ValueError):
    """The URL is not an absolute http(s) URL."""


class ScrapeTimeoutError(ScrapeError, TimeoutError):
    """The request did not complete within the timeout."""


class ScrapeConnectionError(ScrapeError, ConnectionError):
    """The connection could not be made or was dropped."""


class InvalidResponseError(ScrapeConnectionError):
    """The server's response was malformed (bad status line, conflicting framing, bad
    chunk size, control bytes in a header) or ended before its framing said it would."""


class ResponseTooLargeError(ScrapeError):
    """The response exceeded a limit: body size, decoded size, head size or header count.

    Raise the matching ``AsyncScraper`` limit (``max_body_size``, ...) if the response is
    expected to be that large.
    """


class TooManyRedirectsError(ScrapeError):
    """A redirect loop, or a chain longer than the limit; not retried."""


class UnsafeRequestError(ScrapeError, ValueError):
    """The request would put control bytes or a non-token method or header name on the wire."""


class HTTPStatusError(ScrapeError):
    """The server answered with an error status after all retries."""

    def __init__(
        self, message: str, *, url: str | None = None, attempt: int = 0, status_code: int = 0
    ) -> None:
        super().__init__(message, url=url, attempt=attempt)
        self.status_code = status_code


# -- chrome pool --------------------------------------------------------------------------


class PoolError(LeadperfError):
    """A Chrome pool operation failed."""


class PoolExhaustedError(PoolError, TimeoutError):
    """Every instance stayed busy past the acquire timeout. Raise the timeout or pool_size."""


class BrowserCrashedError(PoolError):
    """The browser serving a task died or hung; it has been replaced. Retry the task."""


class BrowserStartError(PoolError):
    """Chrome or chromedriver could not be started; the message says which and why."""


# -- resources ----------------------------------------------------------------------------


class ImageError(LeadperfError, ValueError):
    """An image is empty, corrupt, too large to decode safely, or in an unsupported format."""


class CompressionError(LeadperfError, ValueError):
    """Compressed text is corrupt, truncated, or decompresses past the allowed size."""


# -- tasks --------------------------------------------------------------------------------


class TaskQueueFullError(LeadperfError):
    """The task queue holds ``max_queued`` items; wait (``submit``) or raise the bound."""


# -- database -----------------------------------------------------------------------------


class DatabaseError(LeadperfError):
    """A database operation failed."""


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database cannot be reached. Check DATABASE_URL and that the server runs."""


class BulkUpsertError(DatabaseError):
    """One batch of a bulk upsert failed and was rolled back whole."""

    def __init__(self, message: str, *, table: str, batch: int) -> None:
        super().__init__(message)
        self.table = table
        self.batch = batch
