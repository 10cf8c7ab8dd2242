"""Shared fixtures: real Redis, real PostgreSQL, real Chromium; never mocks of them.

Servers come from ``LEADPERF_TEST_REDIS_URL`` / ``LEADPERF_TEST_DATABASE_URL`` (default:
the local servers on 127.0.0.1). When a server is unreachable the test is skipped with
a reason saying how to get one, except under ``CI``, where a skip would hide that the
suite never talked to the server: there it fails.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

REDIS_URL = os.environ.get("LEADPERF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "LEADPERF_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def service_missing(reason: str) -> None:
    """Skip locally, fail under CI (a skipped service test must never turn CI green)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # The scraper's native engine (the default) and aiohttp run on asyncio only.
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server (database 15 by default, flushed by nobody)."""
    try:
        import redis
    except ImportError:
        service_missing("redis-py is not installed: pip install -e '.[all,test]'")
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        service_missing(
            f"Redis is not reachable at LEADPERF_TEST_REDIS_URL ({type(exc).__name__}); start one: "
            "redis-server --daemonize yes --port 6379 --save ''"
        )
    return REDIS_URL


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of a reachable PostgreSQL server."""
    try:
        import psycopg
    except ImportError:
        service_missing("psycopg is not installed: pip install -e '.[all,test]'")
    for attempt in (1, 2):
        try:
            with psycopg.connect(DATABASE_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            break
        except Exception as exc:
            # A fresh server has no "test" database yet: create it once, then retry.
            if attempt == 1 and create_missing_database(DATABASE_URL):
                continue
            service_missing(
                f"PostgreSQL is not reachable at LEADPERF_TEST_DATABASE_URL "
                f"({type(exc).__name__}); start one: pg_ctlcluster $(ls /etc/postgresql) main "
                "start"
            )
    return DATABASE_URL


def create_missing_database(url: str) -> bool:
    """Create ``url``'s database when its server answers but lacks it; True if it now exists."""
    import psycopg
    from psycopg import conninfo, errors, sql

    name = conninfo.conninfo_to_dict(url).get("dbname")
    if not name or name == "postgres":
        return False
    try:
        admin = conninfo.make_conninfo(url, dbname="postgres")
        with psycopg.connect(admin, connect_timeout=3, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False  # it exists: the failure was something else
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    except errors.DuplicateDatabase:
        return True  # another session created it first
    except Exception:
        return False  # the server itself is not reachable
    return True


@pytest.fixture
def unique_name() -> str:
    """A fresh identifier-safe name, so tests sharing a server never see each other's data."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def chrome_paths() -> tuple[str, str]:
    """(chromium binary, chromedriver) from Debian's chromium and chromium-driver packages."""
    binary = (
        os.environ.get("LEADPERF_TEST_CHROME")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    driver = os.environ.get("LEADPERF_TEST_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        service_missing(
            "chromium and chromedriver are not installed: apt-get install chromium chromium-driver"
        )
    assert binary
    assert driver
    return binary, driver


@pytest.fixture
def tmp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Monkeypatch with every leadperf-related env var cleared first."""
    from leadperf.config import ENV_VARS

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- reliability report -------------------------------------------------------------------
# Fault and hostile-input tests record what they observed; scripts/reliability_report.py
# turns the records of the last run into docs/reliability.md, so the table is the suite's
# own output, never written by hand.

RELIABILITY_DIR = os.path.join(os.path.dirname(__file__), "..", ".reliability")


class Reliability:
    """Appends one JSON line per observed fault to ``.reliability/<area>.jsonl``."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id

    def record(self, area: str, fault: str, promise: str, observed: str) -> None:
        """Record one row: the fault tried, what leadperf promises, what the test saw."""
        import json
        import time

        os.makedirs(RELIABILITY_DIR, exist_ok=True)
        row = {
            "area": area,
            "fault": fault,
            "promise": promise,
            "observed": observed,
            "test": self.test_id,
            "at": time.time(),
        }
        with open(os.path.join(RELIABILITY_DIR, f"{area}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Reliability:
    """Record a fault test's observation for docs/reliability.md (see Reliability.record)."""
    return Reliability(request.node.nodeid)
