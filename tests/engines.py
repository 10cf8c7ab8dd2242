"""The engines a scraper test runs on, with the native engine's cases marked.

The native engine takes ``limits=`` and one ``Request`` once its parser-based rebuild is
in; until then its cases are skipped with that reason rather than failing for a missing
constructor argument, and they run by themselves as soon as it accepts the new seam.
"""

from __future__ import annotations

import inspect

import pytest


def native_ready() -> bool:
    """True when the native engine takes the one-Request seam (``limits=`` constructor)."""
    try:
        from leadperf._scrape._native import NativeEngine
    except Exception:
        return False
    return "limits" in inspect.signature(NativeEngine.__init__).parameters


NATIVE_READY = native_ready()
NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(
        not NATIVE_READY, reason="native engine not yet on the Request/Limits seam"
    ),
)
#: Every engine, the default first.
ENGINES = ["aiohttp", "httpx", NATIVE]
