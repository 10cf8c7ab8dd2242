from __future__ import annotations

import subprocess
import sys

import pytest

import leadperf
import leadperf.errors as errors
from leadperf import LeadperfError


def test_all_is_sorted_and_complete() -> None:
    assert leadperf.__all__ == sorted(leadperf.__all__)
    for name in leadperf.__all__:
        assert getattr(leadperf, name) is not None


def test_design_names_are_importable() -> None:
    from leadperf import (  # noqa: F401
        AsyncScraper,
        ChromePool,
        ConfigError,
        LeadperfError,
        PerformanceOptimizer,
        RetryPolicy,
        ScrapeResult,
        Settings,
        cached,
        get_chrome_pool,
        get_performance_optimizer,
    )
    from leadperf.cache import (  # noqa: F401
        Cache,
        CacheStats,
        MemoryCache,
        PostgresCache,
        RedisCache,
        TieredCache,
        from_url,
    )
    from leadperf.monitor import SystemMonitor  # noqa: F401
    from leadperf.optimize import (  # noqa: F401
        PROFILES,
        DatabaseOptimizer,
        ResourceOptimizer,
        get_resource_optimizer,
    )


def test_import_is_light() -> None:
    code = (
        "import sys, leadperf, leadperf.cache, leadperf.scraper, leadperf.pool, "
        "leadperf.optimize, leadperf.monitor, leadperf.config\n"
        "heavy = ('selenium', 'redis', 'psycopg', 'psycopg_pool', 'PIL', 'fastapi', 'aiohttp')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError):
        _ = leadperf.DoesNotExist


def test_error_hierarchy_and_builtins() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, LeadperfError)
        assert name in (errors.__doc__ or ""), f"{name} missing from the tree in the docstring"
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.PoolExhaustedError, (errors.PoolError, TimeoutError))
    assert issubclass(errors.CacheUnavailableError, ConnectionError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    err = errors.MissingDependencyError("redis", "redis")
    assert "pip install 'leadperf[redis]'" in str(err)


def test_mask_url() -> None:
    from leadperf._util import mask_url

    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("postgresql://u:pw@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"
    assert mask_url("memory://") == "memory://"
    assert mask_url(None) is None
