"""One set of argument validators; every error names the argument.

Each check takes ``(value, name)`` and returns the value (normalised: numbers as
``float``) or raises :class:`ConfigError` whose message starts with ``name`` and whose
``key`` is ``name``. :func:`as_attrs` turns any of them into an attrs validator that
names the field::

    size = positive_int(size, "size")
    limit: int = attrs.field(validator=as_attrs(positive_int))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

from ..errors import ConfigError

__all__ = [
    "as_attrs",
    "at_least",
    "boolean",
    "choice",
    "int_in_range",
    "non_negative_int",
    "non_negative_number",
    "positive_int",
    "positive_number",
    "url_with_scheme",
]

T = TypeVar("T")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` when it is an ``int`` > 0 (``bool`` is refused).

    Args:
        value: what the caller passed.
        name: the argument's name, used in the message and as ``ConfigError.key``.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not an int, or < 1.
    """
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{name}: must be an integer > 0, got {value!r}", key=name)
    return int(value)


def non_negative_int(value: Any, name: str) -> int:
    """Return ``value`` when it is an ``int`` >= 0.

    Args:
        value: what the caller passed.
        name: the argument's name.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not an int, or negative.
    """
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{name}: must be an integer >= 0, got {value!r}", key=name)
    return int(value)


def int_in_range(value: Any, name: str, low: int, high: int) -> int:
    """Return ``value`` when it is an ``int`` in ``low..high`` (both included).

    Args:
        value: what the caller passed.
        name: the argument's name.
        low: smallest accepted value.
        high: largest accepted value.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not an int, or outside the range.
    """
    if not _is_int(value) or not low <= value <= high:
        raise ConfigError(f"{name}: must be an integer {low}..{high}, got {value!r}", key=name)
    return int(value)


def at_least(
    value: Any, name: str, minimum: float, *, strict: bool = False, integer: bool = False
) -> Any:
    """Return ``value`` when it is a number >= ``minimum`` (> with ``strict``).

    Args:
        value: what the caller passed (``bool`` and NaN are refused).
        name: the argument's name.
        minimum: the bound.
        strict: refuse ``minimum`` itself.
        integer: accept only ints.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not a number (an int with ``integer``), or below the bound.
    """
    ok_type = _is_int(value) if integer else _is_number(value)
    if not ok_type or not (value > minimum if strict else value >= minimum):
        kind = "an integer" if integer else "a number"
        op = ">" if strict else ">="
        raise ConfigError(f"{name}: must be {kind} {op} {minimum}, got {value!r}", key=name)
    return value


def positive_number(value: Any, name: str, *, finite: bool = True) -> float:
    """Return ``value`` as a float when it is a number > 0 (NaN refused).

    Args:
        value: what the caller passed (an int or a float; ``bool`` is refused).
        name: the argument's name.
        finite: refuse infinity too (the default).

    Returns:
        ``float(value)``.

    Raises:
        ConfigError: not a number, not > 0, or infinite when ``finite``.
    """
    if not _is_number(value) or not value > 0 or (finite and math.isinf(value)):
        what = "a finite number > 0" if finite else "a number > 0"
        raise ConfigError(f"{name}: must be {what}, got {value!r}", key=name)
    return float(value)


def non_negative_number(value: Any, name: str, *, finite: bool = True) -> float:
    """Return ``value`` as a float when it is a number >= 0 (NaN refused).

    Args:
        value: what the caller passed.
        name: the argument's name.
        finite: refuse infinity too (the default).

    Returns:
        ``float(value)``.

    Raises:
        ConfigError: not a number, negative, or infinite when ``finite``.
    """
    if not _is_number(value) or value < 0 or (finite and math.isinf(value)):
        what = "a finite number >= 0" if finite else "a number >= 0"
        raise ConfigError(f"{name}: must be {what}, got {value!r}", key=name)
    return float(value)


def boolean(value: Any, name: str) -> bool:
    """Return ``value`` when it is a ``bool`` (``0``/``1`` and strings are refused).

    Args:
        value: what the caller passed.
        name: the argument's name.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not a bool.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be True or False, got {value!r}", key=name)
    return value


def choice(value: Any, name: str, choices: Collection[T]) -> T:
    """Return ``value`` when it is one of ``choices``.

    Args:
        value: what the caller passed.
        name: the argument's name.
        choices: the accepted values (listed in the message).

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not one of ``choices``.
    """
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set
        ok = False
    if not ok:
        listed = ", ".join(repr(c) for c in sorted(choices, key=repr))
        raise ConfigError(f"{name}: must be one of {listed}, got {value!r}", key=name)
    return value  # type: ignore[no-any-return]


def url_with_scheme(value: Any, name: str, schemes: Collection[str]) -> str:
    """Return ``value`` when it is a URL whose scheme is one of ``schemes``.

    The message never quotes the URL itself (it may carry credentials), only its scheme.

    Args:
        value: what the caller passed.
        name: the argument's name.
        schemes: accepted lowercase schemes, e.g. ``{"http", "https"}``.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not a str, or another scheme.
    """
    listed = ", ".join(f"{s}://" for s in sorted(schemes))
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(
            f"{name}: must be a URL starting with {listed}, got a {type(value).__name__}"
            if not isinstance(value, str)
            else f"{name}: must be a URL starting with {listed}",
            key=name,
        )
    scheme = urlsplit(value).scheme.lower()
    if scheme not in schemes:
        raise ConfigError(f"{name}: scheme {scheme!r} is not one of {listed}", key=name)
    return value


def as_attrs(
    check: Callable[..., Any],
    *args: Any,
    name: Callable[[Any, attrs.Attribute[Any]], str] | None = None,
    **kwargs: Any,
) -> Any:
    """An attrs validator running ``check(value, field_name, *args, **kwargs)``.

    Args:
        check: one of this module's checks.
        *args: extra positional arguments for ``check`` (``choices``, ``low, high``...).
        name: how to name the field in the error, from ``(instance, attribute)``
            (default: the attribute's name; settings use ``"section.key"``).
        **kwargs: extra keyword arguments for ``check``.

    Returns:
        A callable ``(instance, attribute, value)`` for ``attrs.field(validator=...)``.
    """

    def validator(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        label = attribute.name if name is None else name(inst, attribute)
        check(value, label, *args, **kwargs)

    return validator
