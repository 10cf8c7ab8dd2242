"""Validation of keys, TTLs, namespaces, sizes and patterns; the URL-scheme registry."""

from __future__ import annotations

import math
import re
from typing import Any, Final

from ..errors import CacheKeyError, ConfigError

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "backend_for",
    "bad_key",
    "check_namespace",
    "check_pattern",
    "check_size",
    "check_ttl",
    "glob_to_regex",
    "known_schemes",
    "register_backend",
]

#: Longest key accepted, in characters (keeps every backend's index happy).
MAX_KEY_LENGTH: Final = 512
#: Longest namespace accepted, in characters.
MAX_NAMESPACE_LENGTH: Final = 128
#: Largest stored entry accepted by ``set`` when neither argument nor settings say (bytes).
DEFAULT_MAX_VALUE_SIZE: Final = 16 * 1024 * 1024


# -- validation helpers ---------------------------------------------------------------------


def check_ttl(ttl: Any, name: str = "ttl") -> float:
    """Return ``ttl`` as a float of seconds > 0, or raise ConfigError naming it."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0 or math.isinf(ttl):
        raise ConfigError(
            f"{name}: must be a finite number of seconds > 0, got {ttl!r}; "
            "pass None to use the cache's default TTL",
            key=name,
        )
    return float(ttl)


def check_namespace(namespace: Any) -> str:
    # Stored keys are "<namespace>:<key>". A ":" inside a namespace would make namespace
    # "a:b" a part of namespace "a" (its clear("*") would delete it), so it is refused.
    if (
        not isinstance(namespace, str)
        or not namespace
        or len(namespace) > MAX_NAMESPACE_LENGTH
        or "\x00" in namespace
        or ":" in namespace
    ):
        raise ConfigError(
            f"namespace: must be a non-empty str of at most {MAX_NAMESPACE_LENGTH} characters "
            f"without NUL or ':' (namespaces cannot nest; use e.g. 'app-leads'), got "
            f"{namespace!r}",
            key="namespace",
        )
    return namespace


def check_size(value: Any, name: str) -> int:
    """Return ``value`` if it is an int of bytes > 0, else raise ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name}: must be an integer number of bytes > 0, got {value!r}", key=name
        )
    return value


def bad_key(key: Any) -> CacheKeyError:
    if not isinstance(key, str):
        return CacheKeyError(
            f"cache keys must be str, got {type(key).__name__} {key!r:.80}; convert it, "
            "e.g. str(key) or a hash of it"
        )
    if not key:
        return CacheKeyError("cache keys must not be empty")
    if "\x00" in key:
        return CacheKeyError(f"cache keys must not contain NUL characters, got {key!r:.80}")
    return CacheKeyError(
        f"cache key is {len(key)} characters, more than the {MAX_KEY_LENGTH} allowed; "
        f"hash long keys (e.g. hashlib.sha256(key.encode()).hexdigest()): {key[:40]!r}..."
    )


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile glob ``pattern`` (``*`` any run, ``?`` one char, all else literal)."""
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"pattern: must be a non-empty glob str of at most {MAX_KEY_LENGTH} characters "
            f"('*' any run, '?' one character), got {pattern!r:.80}",
            key="pattern",
        )
    return pattern


# -- registry by URL scheme -----------------------------------------------------------------

_BACKENDS: dict[str, str] = {}


def register_backend(scheme: str, path: str) -> None:
    """Map URL ``scheme`` to ``"module:Class"`` (imported only when that scheme is used)."""
    _BACKENDS[scheme] = path


def backend_for(scheme: str) -> str | None:
    return _BACKENDS.get(scheme)


def known_schemes() -> list[str]:
    return sorted(_BACKENDS)
