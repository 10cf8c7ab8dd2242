"""Small helpers shared by every part: credential masking and lazy optional imports."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._core.redact import mask_url as _mask_url
from .errors import MissingDependencyError

__all__ = ["mask_url", "require"]


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with every credential masked as ``***`` (:mod:`leadperf._core.redact`)."""
    return _mask_url(url)


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module.split(".")[0], extra) from exc
