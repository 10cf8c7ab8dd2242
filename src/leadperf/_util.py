"""Small helpers shared by every part: credential masking and lazy optional imports."""

from __future__ import annotations

import importlib
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from .errors import MissingDependencyError

__all__ = ["mask_url", "require"]


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with any password replaced by ``***`` (for reprs, logs and errors)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    userinfo = f"{user}:***" if parts.password is not None else user
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, ""))


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module.split(".")[0], extra) from exc
