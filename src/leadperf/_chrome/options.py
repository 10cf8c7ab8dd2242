"""The command line every pooled Chrome starts with, and the ChromeOptions built from it."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from .._util import require

__all__ = [
    "DEFAULT_ISOLATION",
    "DISABLED_FEATURES",
    "ISOLATION_MODES",
    "REQUIRED_FLAGS",
    "SHARED_RENDERER_FLAGS",
    "build_options",
    "chrome_flags",
    "owned_flag_in",
]

#: How tasks are kept apart: a fresh browser context each, or a fresh tab in one shared,
#: cleared context.
ISOLATION_MODES: tuple[str, ...] = ("context", "tab")
#: The mode a pool uses unless told otherwise: a new tab per task in the instance's one
#: off-the-record context, cleared on release. It costs about 40 % less CPU per task than
#: "context" (docs/perf/pool.md); docs/pool.md says what it shares.
DEFAULT_ISOLATION = "tab"

#: Flags every pooled Chrome starts with (``--headless=new`` in front when headless).
REQUIRED_FLAGS: tuple[str, ...] = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
_OWNED_FLAGS = ("--user-data-dir", "--remote-debugging-port")
#: Chrome features the pool turns off. Each new browser context otherwise starts an extra
#: renderer for the omnibox popup, which a headless tab never shows; measured here, it
#: doubled the time to hand a fresh context to the next task.
DISABLED_FEATURES: tuple[str, ...] = ("WebUIOmniboxPopup", "WebUIOmniboxAimPopup")
#: Added for ``isolation="tab"``: one renderer process serves every tab of the instance
#: (site isolation off, at most one renderer), so a task's new tab and its first page do
#: not each start a renderer process. Measured here, that is most of what a tab costs.
#: Context mode cannot share renderers between contexts, so it keeps Chrome's defaults.
SHARED_RENDERER_FLAGS: tuple[str, ...] = (
    "--renderer-process-limit=1",
    "--disable-site-isolation-trials",
)
_DISABLE_FEATURES = "--disable-features="


def chrome_flags(headless: bool, isolation: str = DEFAULT_ISOLATION) -> list[str]:
    """Chrome command-line flags for a pooled instance (``--no-sandbox`` only as root)."""
    flags = ["--headless=new"] if headless else []
    flags.extend(REQUIRED_FLAGS)
    if isolation == "tab":
        flags.extend(SHARED_RENDERER_FLAGS)
    # Chrome refuses to start as root with its sandbox on; elsewhere keep the sandbox.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def build_options(
    base: Any,
    *,
    headless: bool,
    binary: str | None,
    extra: Sequence[str],
    isolation: str = DEFAULT_ISOLATION,
) -> Any:
    """A fresh ``ChromeOptions``: the user's base options plus the pool's flags."""
    webdriver = require("selenium.webdriver", "chrome", "selenium")
    if base is None:
        opts = webdriver.ChromeOptions()
    elif isinstance(base, list | tuple):
        opts = webdriver.ChromeOptions()
        for arg in base:
            opts.add_argument(str(arg))
    else:
        opts = copy.deepcopy(base)
    for flag in [*chrome_flags(headless, isolation), *extra]:
        if flag not in opts.arguments:
            opts.add_argument(flag)
    # Chrome honours only one --disable-features: merge the user's list with the pool's.
    features = list(DISABLED_FEATURES)
    for arg in [a for a in opts.arguments if a.startswith(_DISABLE_FEATURES)]:
        opts.arguments.remove(arg)
        features.extend(f for f in arg[len(_DISABLE_FEATURES) :].split(",") if f)
    opts.add_argument(_DISABLE_FEATURES + ",".join(dict.fromkeys(features)))
    if binary and not opts.binary_location:
        opts.binary_location = binary
    return opts


def owned_flag_in(base: Any) -> str | None:
    """The first flag in ``base`` options that the pool must own itself, if any."""
    if base is None:
        return None
    args = list(base) if isinstance(base, list | tuple) else list(getattr(base, "arguments", []))
    for arg in args:
        for owned in _OWNED_FLAGS:
            if str(arg).startswith(owned):
                return owned
    return None
