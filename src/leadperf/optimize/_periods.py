"""Calendar periods of a partitioned table: where a month or day starts, and its literal.

Every moment is handled in UTC: a naive datetime is read as UTC, a date as its UTC
midnight.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from ..errors import ConfigError

__all__ = ["Interval", "next_period", "period_start", "sql_literal", "utc"]

Interval = Literal["month", "day"]


def utc(value: dt.datetime | dt.date, what: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # naive: read as UTC, as documented
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ConfigError(f"{what} must be a datetime or date, got {type(value).__name__}", key=what)


def period_start(moment: dt.datetime, interval: Interval) -> dt.datetime:
    """Start (UTC) of the month or day containing ``moment``."""
    moment = moment.astimezone(dt.UTC)
    if interval == "month":
        return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    return dt.datetime(moment.year, moment.month, moment.day, tzinfo=dt.UTC)


def next_period(start: dt.datetime, interval: Interval) -> dt.datetime:
    """Start of the period after the one beginning at ``start``."""
    if interval == "day":
        return start + dt.timedelta(days=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def sql_literal(moment: dt.datetime) -> str:
    # An untyped literal: the server coerces it to the partition key's own type
    # (timestamptz: UTC midnight; timestamp and date: the same wall-clock midnight).
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")
