"""One lazy-export helper for the packages' ``__init__`` modules.

A package maps each lazily loaded public name to the module defining it and installs
the returned ``__getattr__``/``__dir__``; the module is imported on first access and
the value cached in the package's globals (PEP 562), its ``__module__`` rewritten to the
public package when it was defined in a private module (:func:`publish`)::

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"RedisCache": "._redis"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports", "publish"]


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def publish(package: str, value: Any) -> Any:
    """Give ``value`` the public module path ``package`` when it was defined in a private
    module (as httpx does), so reprs, docs and pickles name ``leadperf.cache.MemoryCache``
    rather than ``leadperf.cache._memory.MemoryCache``.

    Args:
        package: the public package exporting ``value``.
        value: a class or function (anything else is returned untouched).

    Returns:
        ``value``.
    """
    module = getattr(value, "__module__", None)
    if (
        (isinstance(value, type) or callable(value))
        and isinstance(module, str)
        and module.startswith("leadperf")
        and _is_private(module)
    ):
        try:
            value.__module__ = package
        except (AttributeError, TypeError):  # a builtin or slotted object: leave it
            pass
    return value


def lazy_exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's module-level ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's ``__name__`` (relative module paths resolve against it).
        namespace: the package's ``globals()``; loaded values are cached there.
        names: public name -> module path (``"._redis"`` or absolute).

    Returns:
        ``(__getattr__, __dir__)``: the first raises AttributeError for unknown names,
        the second lists the module globals plus ``__all__``.
    """
    table = dict(names)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = publish(package, getattr(importlib.import_module(module, package), name))
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(table))

    return __getattr__, __dir__
