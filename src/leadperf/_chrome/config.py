"""A ChromePool's arguments, merged with settings and checked once, naming the bad one."""

from __future__ import annotations

import os
import shutil
from typing import Any

import attrs

from .._core.validate import positive_int, positive_number
from ..config import Settings
from ..errors import ConfigError
from .options import ISOLATION_MODES, owned_flag_in

__all__ = ["PoolConfig", "find_chrome", "resolve"]


@attrs.frozen
class PoolConfig:
    """What a pool was asked for, after defaults from settings and validation."""

    pool_size: int
    idle_timeout: float
    headless: bool
    max_tasks_per_instance: int | None
    max_memory_mb: float | None
    start_timeout: float
    op_timeout: float
    isolation: str
    options: Any
    remote_url: str | None
    chrome_binary: str | None
    driver_path: str | None


def resolve(settings: Settings, **given: Any) -> PoolConfig:
    """Merge ``given`` (ChromePool's arguments; None means "from settings") and check them.

    Raises:
        ConfigError: naming the first bad argument and what it must be.
    """
    chrome = settings.chrome
    size = given["pool_size"]
    pool_size = positive_int(chrome.pool_size if size is None else size, "pool_size")
    idle = given["idle_timeout"]
    idle_timeout = positive_number(
        chrome.idle_timeout if idle is None else idle, "idle_timeout", finite=False
    )
    headless = chrome.headless if given["headless"] is None else given["headless"]
    if not isinstance(headless, bool):
        raise ConfigError(f"headless: must be true or false, got {headless!r}", key="headless")
    max_tasks = given["max_tasks_per_instance"]
    if max_tasks is not None:
        max_tasks = positive_int(max_tasks, "max_tasks_per_instance")
    max_memory = given["max_memory_mb"]
    if max_memory is not None:
        max_memory = positive_number(max_memory, "max_memory_mb", finite=False)
    start_timeout = positive_number(given["start_timeout"], "start_timeout", finite=False)
    op_timeout = positive_number(given["op_timeout"], "op_timeout", finite=False)
    isolation = given["isolation"]
    if isolation not in ISOLATION_MODES:
        raise ConfigError(
            f"isolation: must be 'context' or 'tab', got {isolation!r}", key="isolation"
        )
    options = given["options"]
    if options is not None and isinstance(options, str | bytes):
        raise ConfigError(
            "options: pass a ChromeOptions or a list of arguments, not a string", key="options"
        )
    owned = owned_flag_in(options)
    if owned is not None:
        raise ConfigError(
            f"options: {owned} is set by the pool for each instance; remove it", key="options"
        )
    remote_url = given["remote_url"]
    chrome_binary = given["chrome_binary"] or find_chrome()
    driver_path = given["driver_path"] or shutil.which("chromedriver")
    if remote_url is None:
        _check_local_paths(chrome_binary, driver_path)
    return PoolConfig(
        pool_size=pool_size,
        idle_timeout=idle_timeout,
        headless=headless,
        max_tasks_per_instance=max_tasks,
        max_memory_mb=max_memory,
        start_timeout=start_timeout,
        op_timeout=op_timeout,
        isolation=isolation,
        options=options,
        remote_url=remote_url,
        chrome_binary=chrome_binary,
        driver_path=driver_path,
    )


def _check_local_paths(chrome_binary: str | None, driver_path: str | None) -> None:
    if not chrome_binary:
        raise ConfigError(
            "chrome_binary: no chromium or google-chrome on PATH; install Chromium "
            "(apt-get install chromium) or pass chrome_binary=",
            key="chrome_binary",
        )
    if not driver_path:
        raise ConfigError(
            "driver_path: no chromedriver on PATH; install it (apt-get install "
            "chromium-driver) or pass driver_path=",
            key="driver_path",
        )
    for key, path in (("chrome_binary", chrome_binary), ("driver_path", driver_path)):
        if not os.path.isfile(path):
            raise ConfigError(f"{key}: {path} is not a file", key=key)


def find_chrome() -> str | None:
    """The first Chromium or Chrome binary on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None
