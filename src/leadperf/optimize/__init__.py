"""Optimisation parts: resources (images, text), database (bulk upserts, query cache),
archival (partitions), background tasks, memory management, tuning profiles,
recommendations and the :class:`PerformanceOptimizer` facade.

Names load lazily so that importing this package pulls in neither PIL nor psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from .archive import Archiver
    from .database import DatabaseOptimizer
    from .memory import MemoryGuard
    from .optimizer import PerformanceOptimizer, get_performance_optimizer
    from .profiles import PROFILES, Profile
    from .recommend import Recommendation
    from .resources import ResourceOptimizer, get_resource_optimizer
    from .tasks import TaskHandle, TaskOptimizer, TaskQueueFullError, TaskStats

__all__ = [
    "PROFILES",
    "Archiver",
    "DatabaseOptimizer",
    "MemoryGuard",
    "PerformanceOptimizer",
    "Profile",
    "Recommendation",
    "ResourceOptimizer",
    "TaskHandle",
    "TaskOptimizer",
    "TaskQueueFullError",
    "TaskStats",
    "get_performance_optimizer",
    "get_resource_optimizer",
]

_LAZY: dict[str, str] = {
    "Archiver": ".archive",
    "DatabaseOptimizer": ".database",
    "PerformanceOptimizer": ".optimizer",
    "get_performance_optimizer": ".optimizer",
    "PROFILES": ".profiles",
    "Profile": ".profiles",
    "ResourceOptimizer": ".resources",
    "get_resource_optimizer": ".resources",
    "MemoryGuard": ".memory",
    "Recommendation": ".recommend",
    "TaskHandle": ".tasks",
    "TaskOptimizer": ".tasks",
    "TaskQueueFullError": ".tasks",
    "TaskStats": ".tasks",
}

__getattr__, __dir__ = _lazy_exports(__name__, globals(), _LAZY)
