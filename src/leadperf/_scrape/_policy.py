"""Policy values: how failed requests are retried and how polite to be per platform.

Small frozen value objects (``RetryPolicy``, ``PlatformLimits``) validated where they are
built, changed with ``evolve``; retry timing is a pure function separate from sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .._core.validate import as_attrs, at_least
from ..errors import ConfigError, HTTPStatusError, ScrapeConnectionError, ScrapeTimeoutError

__all__ = [
    "DEFAULT_RETRY_ERRORS",
    "DEFAULT_RETRY_STATUSES",
    "PlatformLimits",
    "RetryPolicy",
]

#: Statuses retried by default: timeouts, throttling and every server error.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})
#: Exceptions retried by default.
DEFAULT_RETRY_ERRORS: frozenset[type[BaseException]] = frozenset(
    {ScrapeConnectionError, ScrapeTimeoutError}
)


def _retry_on_converter(value: Iterable[int | type[BaseException]]) -> frozenset[Any]:
    return frozenset(value)


def _check_retry_on(inst: Any, attribute: attrs.Attribute[Any], value: frozenset[Any]) -> None:
    for item in value:
        is_status = isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599
        is_error = isinstance(item, type) and issubclass(item, BaseException)
        if not (is_status or is_error):
            raise ConfigError(
                f"retry_on: items must be HTTP status codes (100-599) or exception classes, "
                f"got {item!r}",
                key="retry_on",
            )


def _retry_on_repr(value: frozenset[Any]) -> str:
    statuses = sorted(v for v in value if isinstance(v, int))
    errors = sorted(v.__name__ for v in value if isinstance(v, type))
    if set(range(500, 600)) <= set(statuses):
        statuses = [s for s in statuses if s < 500 or s > 599]
        shown = [*map(str, statuses), "5xx", *errors]
    else:
        shown = [*map(str, statuses), *errors]
    return "{" + ", ".join(shown) + "}"


@attrs.frozen
class RetryPolicy:
    """How failed requests are retried: exponential backoff with jitter, capped.

    ``attempts`` counts the first try (1 = never retry). The delay before retry *n* is
    ``backoff * 2 ** (n - 1)`` seconds, at most ``max_backoff``, scaled into
    ``[50%, 100%]`` when ``jitter``. ``retry_on`` holds HTTP status codes and exception
    classes; by default connection errors, timeouts, 408, 429 and every 5xx (never any
    other 4xx). A ``Retry-After`` header wins over the computed delay; one longer than
    ``max_retry_after`` seconds is not waited for (the result records the error).
    Bad values raise :class:`ConfigError` naming the field.
    """

    attempts: int = attrs.field(default=3, validator=as_attrs(at_least, 1, integer=True))
    backoff: float = attrs.field(default=0.5, validator=as_attrs(at_least, 0))
    max_backoff: float = attrs.field(default=30.0, validator=as_attrs(at_least, 0))
    jitter: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    retry_on: frozenset[int | type[BaseException]] = attrs.field(
        default=DEFAULT_RETRY_STATUSES | DEFAULT_RETRY_ERRORS,
        converter=_retry_on_converter,
        validator=_check_retry_on,
        repr=_retry_on_repr,
    )
    max_retry_after: float = attrs.field(default=300.0, validator=as_attrs(at_least, 0))

    def evolve(self, **changes: Any) -> RetryPolicy:
        """Return a copy with ``changes`` (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    def should_retry(self, error: BaseException) -> bool:
        """True when ``error`` (a failed attempt) is retryable under this policy."""
        if isinstance(error, HTTPStatusError):
            return error.status_code in self.retry_on
        return any(isinstance(item, type) and isinstance(error, item) for item in self.retry_on)

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A pure function: ``retry_after`` (seconds, from the server) wins when given;
        ``rand`` is injectable for tests.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        computed = min(self.max_backoff, self.backoff * 2.0 ** max(0, attempt - 1))
        if self.jitter:
            computed *= 0.5 + rand() / 2.0
        return computed


@attrs.frozen
class PlatformLimits:
    """Politeness settings for one platform, overriding the scraper's defaults.

    ``max_concurrent``: requests in flight at once (None: the scraper's
    ``max_concurrent``). ``delay``: minimum seconds between request starts, on top of any
    batch's ``delay_seconds`` (the larger wins). ``adaptive``: when False, 429/503 answers
    and runs of timeouts never shrink the platform's slots or add spacing (for a server
    whose error rate says nothing about load); a ``Retry-After`` is honoured either way.
    Bad values raise :class:`ConfigError`.
    """

    max_concurrent: int | None = attrs.field(default=None)
    delay: float = attrs.field(default=0.0, validator=as_attrs(at_least, 0))
    adaptive: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    @max_concurrent.validator
    def _check_max_concurrent(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            at_least(value, attribute.name, 1, integer=True)

    def evolve(self, **changes: Any) -> PlatformLimits:
        """Return a copy with ``changes`` (validated like the constructor)."""
        return attrs.evolve(self, **changes)
