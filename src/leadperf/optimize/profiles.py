"""Tuning profiles: named bundles of settings (``balanced``, ``memory_focused``,
``performance_focused``) and the garbage-collector tuning that goes with each."""

from __future__ import annotations

import gc
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
        """``base`` (default: the profile's own defaults) with this profile applied."""
        if base is None:
            return Settings(profile=self.name)
        return base.evolve(profile=self.name)

    def apply_gc(self) -> tuple[int, int, int]:
        """Set the interpreter's GC thresholds for this profile; returns the previous ones."""
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
# so raising the young-generation threshold cuts GC pauses; memory_focused keeps it lower.
_GC = {
    "balanced": (7_000, 10, 10),
    "memory_focused": (700, 10, 10),
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
    """The profile called ``name``; raises ConfigError naming the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}", key="profile"
        ) from None
