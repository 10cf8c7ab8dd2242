"""Tuning profiles: named bundles of settings (``balanced``, ``memory_focused``,
``performance_focused``) and the garbage-collector tuning that goes with each."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ..config import PROFILE_DEFAULTS, Settings
from ..errors import ConfigError

__all__ = ["PROFILES", "Profile", "get_profile"]


@attrs.frozen
class Profile:
    """A tuning profile: its settings overrides and GC thresholds (see :func:`gc.set_threshold`)."""

    name: str
    description: str
    overrides: Mapping[str, Mapping[str, Any]]
    gc_thresholds: tuple[int, int, int]

    def settings(self, base: Settings | None = None) -> Settings:
        """``base`` with this profile applied.

        Args:
            base: the settings to tune (default: the profile's own defaults); URLs and
                settings the profile does not tune are kept.

        Returns:
            New settings; ``base`` is not changed.
        """
        if base is None:
            return Settings(profile=self.name)
        return base.evolve(profile=self.name)

    def apply_gc(self) -> tuple[int, int, int]:
        """Set the interpreter's GC thresholds for this profile.

        Returns:
            The previous thresholds.
        """
        previous = gc.get_threshold()
        gc.set_threshold(*self.gc_thresholds)
        return (previous[0], previous[1], previous[2])


_DESCRIPTIONS = {
    "balanced": "Defaults for a typical host: moderate concurrency, cache and pool sizes.",
    "memory_focused": "Smaller caches, fewer browsers and connections, stronger compression "
    "and more frequent garbage collection, for memory-constrained hosts.",
    "performance_focused": "Larger caches and pools, more concurrency and fewer GC pauses, "
    "for hosts with memory to spare.",
}

# CPython's default is (700, 10, 10). Bulk scraping allocates many short-lived objects,
# so raising the young-generation threshold cuts GC pauses; memory_focused collects more
# often than the default (a lower first threshold, older generations sooner) to return
# cyclic garbage quickly on a tight host.
_GC = {
    "balanced": (7_000, 10, 10),
    "memory_focused": (400, 5, 5),
    "performance_focused": (50_000, 20, 20),
}

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        name: Profile(
            name=name,
            description=_DESCRIPTIONS[name],
            overrides=MappingProxyType(
                {k: MappingProxyType(dict(v)) for k, v in PROFILE_DEFAULTS[name].items()}
            ),
            gc_thresholds=_GC[name],
        )
        for name in PROFILE_DEFAULTS
    }
)


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Args:
        name: ``"balanced"``, ``"memory_focused"`` or ``"performance_focused"``.

    Returns:
        The :class:`Profile`.

    Raises:
        ConfigError: an unknown name (the message names the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}", key="profile"
        ) from None


# -- reaching parts that are already open -------------------------------------------------

Change = dict[str, list[Any]]

# Per part: its settings section, and the fields its apply_settings (or its public tuning
# attributes) take live. Everything else changes when the part is built again.
_PART_SECTIONS = {
    "cache": "cache",
    "scraper": "scraper",
    "chrome": "chrome",
    "database": "database",
    "tasks": "tasks",
    "monitor": "monitoring",
}
_LIVE_FIELDS: dict[str, tuple[str, ...]] = {
    "scraper": ("max_concurrent", "timeout"),
    "chrome": ("pool_size", "idle_timeout"),
    "tasks": ("max_queued",),
    "monitor": ("metrics_interval",),
}
_ATTR_FOR = {"metrics_interval": "interval"}


def _changed(before: Any, after: Any) -> Change:
    out: Change = {}
    for field in attrs.fields(type(before)):
        a, b = getattr(before, field.name), getattr(after, field.name)
        if a != b and "url" not in field.name:
            out[field.name] = [a, b]
    return out


def _set_live(target: Any, attr: str, value: Any) -> bool:
    """Set a part's public tuning attribute when it has one; True when it did."""
    if target is None or not hasattr(target, attr):
        return False
    setattr(target, attr, value)
    return True


async def _cache_live(part: Any, changed: Change) -> tuple[set[str], int]:
    # A tiered cache: TTLs on both tiers, the entry bound on its in-process tier only
    # (a server-backed cache's max_size is its connection pool, fixed at open).
    tiers = [t for t in (getattr(part, "local", None), getattr(part, "remote", None)) if t]
    tiers = tiers or [part]
    live: set[str] = set()
    dropped = 0
    for key in ("default_ttl", "max_size"):
        if key not in changed:
            continue
        targets = [t for t in tiers if key == "default_ttl" or getattr(t, "scheme", "") == "memory"]
        if targets and all(_set_live(t, key, changed[key][1]) for t in targets):
            live.add(key)
    if "max_size" in live:
        dropped = await shrink_memory_tiers(part)
    return live, dropped


async def shrink_memory_tiers(cache: Any) -> int:
    """Bring in-process cache tiers within their (new) bounds with their own
    :meth:`MemoryCache.trim` (least recently used entries go; the rest stay).

    Args:
        cache: any leadperf cache; a tiered cache's in-process tiers are trimmed.

    Returns:
        The number of entries evicted.
    """
    from ..cache import MemoryCache

    tiers = [t for t in (getattr(cache, "local", None), getattr(cache, "remote", None)) if t]
    return sum(t.trim() for t in tiers or [cache] if isinstance(t, MemoryCache))


async def apply_to_parts(parts: Mapping[str, Any], old: Settings, new: Settings) -> dict[str, Any]:
    """Bring open parts to ``new`` settings where they can change live.

    A part with ``apply_settings(settings)`` is given the new settings (it may return the
    names of the fields it took live); otherwise public tuning attributes (cache TTLs and
    memory bounds, the Chrome pool's size and idle timeout, the monitor's interval) are
    set directly, and an in-process cache over a smaller bound is trimmed at once.

    Args:
        parts: the facade's parts by name (``cache``, ``database``, ``scraper`` ...).
        old: the settings the parts run with.
        new: the settings to bring them to.

    Returns:
        ``{part: {"live": {field: [old, new]}, "on_reopen": {field: [old, new]}}}`` for
        every given part whose settings changed (plus ``entries_dropped`` for a trimmed
        cache).
    """
    report: dict[str, Any] = {}
    for name, part in parts.items():
        dropped = 0
        section = _PART_SECTIONS.get(name)
        if section is None:
            continue
        changed = _changed(getattr(old, section), getattr(new, section))
        if not changed:
            continue
        apply = getattr(part, "apply_settings", None)
        if callable(apply):
            result = apply(new)
            if inspect.isawaitable(result):  # async on the database, sync on the scraper
                result = await result
            if isinstance(result, list | tuple | set | frozenset):
                live = set(result)
            elif name == "cache":
                live = set(changed)
            else:
                live = set(_LIVE_FIELDS.get(name, ()))
        elif name == "cache":
            live, dropped = await _cache_live(part, changed)
        else:
            live = {
                f
                for f in _LIVE_FIELDS.get(name, ())
                if f in changed and _set_live(part, _ATTR_FOR.get(f, f), changed[f][1])
            }
        report[name] = {
            "live": {k: v for k, v in changed.items() if k in live},
            "on_reopen": {k: v for k, v in changed.items() if k not in live},
        }
        if dropped:
            report[name]["entries_dropped"] = dropped
    return report
