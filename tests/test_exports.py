"""The public API, both ways, per package (as httpx's tests/test_exported_members.py):
every name in ``__all__`` exists, every public name the package defines is in
``__all__``, ``__all__`` is sorted, and exported classes and functions carry their
public module path (never a private ``_module``)."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

import pytest

PACKAGES = [
    "leadperf",
    "leadperf.cache",
    "leadperf.config",
    "leadperf.errors",
    "leadperf.monitor",
    "leadperf.optimize",
    "leadperf.pool",
    "leadperf.scale",
    "leadperf.scraper",
    "leadperf.web",
]


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _sort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 ("isort-style"): CONSTANTS, then Classes, then the rest.
    if name.isupper() and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def _load(package: str) -> ModuleType:
    if package == "leadperf.web":
        pytest.importorskip("fastapi")
    return importlib.import_module(package)


def _exported(module: ModuleType) -> dict[str, Any]:
    return {name: getattr(module, name) for name in module.__all__}


def _is_code(value: Any) -> bool:
    return inspect.isclass(value) or inspect.isfunction(value)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package: str) -> None:
    module = _load(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_without_repeats(package: str) -> None:
    names = list(_load(package).__all__)
    assert names == sorted(names, key=_sort_key)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_defined_in_the_package_is_in_all(package: str) -> None:
    module = _load(package)
    _exported(module)  # lazy names load, so the namespace holds everything public
    undeclared = sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name not in module.__all__
        and _is_code(value)
        and (value.__module__ == package or value.__module__.startswith(package + "._"))
    )
    assert undeclared == []


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_names_carry_their_public_module_path(package: str) -> None:
    exported = _exported(_load(package))
    private = sorted(
        f"{name} ({value.__module__})"
        for name, value in exported.items()
        if _is_code(value) and _private(value.__module__)
    )
    assert private == []


def test_public_paths_resolve_back_to_the_same_object() -> None:
    # What a pickle or a docs tool does with a rewritten __module__.
    for package in ("leadperf", "leadperf.cache", "leadperf.optimize", "leadperf.scraper"):
        for name, value in _exported(_load(package)).items():
            if _is_code(value):
                home = importlib.import_module(value.__module__)
                assert getattr(home, value.__qualname__) is value, f"{package}.{name}"


def test_errors_are_exported_from_leadperf() -> None:
    import leadperf
    import leadperf.errors

    assert sorted(set(leadperf.errors.__all__) - set(leadperf.__all__)) == []
