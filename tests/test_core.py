"""The shared core: lifecycle bases, validators, lazy exports, percentile; and what the
facade asked of the parts (MemoryCache.trim, DatabaseOptimizer.apply_settings)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import anyio
import attrs
import pytest

from leadperf import (
    ClosedError,
    ConfigError,
    LeadperfError,
    RowValueError,
    SerializationError,
    Settings,
    TaskQueueFullError,
    ValueTooLargeError,
)
from leadperf._core.lazy import lazy_exports
from leadperf._core.lifecycle import (
    AsyncResource,
    Closeable,
    State,
    SyncResource,
    aclose_resource,
)
from leadperf._core.stats import percentile
from leadperf._core.validate import (
    as_attrs,
    at_least,
    boolean,
    choice,
    int_in_range,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    url_with_scheme,
)
from leadperf.cache import MemoryCache

# -- lifecycle ------------------------------------------------------------------------------


def _state_of(resource: AsyncResource) -> State:
    return resource._state


class _Conn(AsyncResource):
    def __init__(self, name: str) -> None:
        self.name = name
        self.opened = 0
        self.closed_count = 0
        self.gate: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Conn {self.name}>"

    async def _aopen(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.opened += 1

    async def _aclose(self) -> None:
        self.closed_count += 1


class _File(SyncResource):
    def __init__(self) -> None:
        self.log: list[str] = []

    def _open(self) -> None:
        self.log.append("open")

    def _close(self) -> None:
        self.log.append("close")


@pytest.mark.anyio
async def test_async_resource_opens_once_closes_once_and_never_reopens() -> None:
    conn = _Conn("a")
    assert _state_of(conn) is State.NEW
    assert not conn.closed
    async with anyio.create_task_group() as tg:  # ten concurrent opens: one _aopen
        for _ in range(10):
            tg.start_soon(conn.open)
    assert conn.opened == 1
    assert _state_of(conn) is State.OPEN
    async with conn as entered:
        assert entered is conn
    assert conn.closed
    assert conn.closed_count == 1
    await conn.aclose()
    await conn.aclose()
    assert conn.closed_count == 1  # idempotent
    with pytest.raises(ClosedError, match=r"<Conn a> is closed and cannot be reopened"):
        await conn.open()
    with pytest.raises(ClosedError, match="<Conn a>"):
        conn._check_open()
    with pytest.raises(ClosedError):
        async with conn:
            pass
    assert conn.opened == 1


@pytest.mark.anyio
async def test_closing_a_never_opened_resource_runs_no_close_step() -> None:
    conn = _Conn("b")
    await conn.aclose()
    assert conn.closed
    assert conn.closed_count == 0
    assert conn.opened == 0


@pytest.mark.anyio
async def test_close_during_open_releases_what_the_open_acquired() -> None:
    conn = _Conn("c")
    conn.gate = anyio.Event()
    failures: list[BaseException] = []

    async def opener() -> None:
        try:
            await conn.open()
        except ClosedError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
        await anyio.wait_all_tasks_blocked()
        await conn.aclose()  # while _aopen waits on the gate
        conn.gate.set()
    assert conn.opened == 1
    assert conn.closed_count == 1
    assert len(failures) == 1
    assert conn.closed


@pytest.mark.anyio
async def test_sync_resource_and_the_one_close_interface() -> None:
    f = _File()
    with f:
        assert f.log == ["open"]
    f.close()
    assert f.log == ["open", "close"]
    with pytest.raises(ClosedError, match="cannot be reopened"), f:
        pass
    g = _File()
    g.open()
    assert isinstance(g, Closeable)
    assert isinstance(_Conn("d"), Closeable)
    await aclose_resource(g)
    assert g.closed
    assert g.log == ["open", "close"]
    with pytest.raises(TypeError, match="has no aclose"):
        await aclose_resource(object())


@pytest.mark.anyio
async def test_every_part_shares_the_lifecycle() -> None:
    from leadperf.cache import TieredCache
    from leadperf.optimize import DatabaseOptimizer, ResourceOptimizer, TaskOptimizer
    from leadperf.optimize.optimizer import PerformanceOptimizer

    for cls in (MemoryCache, TieredCache, DatabaseOptimizer, TaskOptimizer, PerformanceOptimizer):
        assert issubclass(cls, AsyncResource), cls
    assert issubclass(ResourceOptimizer, SyncResource)
    cache = MemoryCache(settings=Settings())
    await cache.set("k", 1)
    await cache.close()
    with pytest.raises(ClosedError, match="create a new cache"):
        await cache.get("k")


# -- validators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (positive_int, [1, 10**12], [0, -1, 1.0, True, "3", None]),
        (non_negative_int, [0, 5], [-1, 0.0, False]),
        (positive_number, [0.001, 3], [0, -1.5, math.nan, math.inf, True, "1"]),
        (non_negative_number, [0, 2.5], [-0.1, math.nan, math.inf, None]),
        (boolean, [True, False], [0, 1, "true", None]),
    ],
)
def test_validators_accept_and_refuse_naming_the_argument(
    check: Any, good: list[Any], bad: list[Any]
) -> None:
    for value in good:
        assert check(value, "arg") == value
    for value in bad:
        with pytest.raises(ConfigError, match=r"^pool_size: must be") as info:
            check(value, "pool_size")
        assert info.value.key == "pool_size"


def test_range_choice_and_url_validators() -> None:
    assert int_in_range(100, "quality", 1, 100) == 100
    with pytest.raises(ConfigError, match=r"quality: must be an integer 1\.\.100, got 101"):
        int_in_range(101, "quality", 1, 100)
    assert choice("br", "algorithm", ("br", "gzip")) == "br"
    with pytest.raises(ConfigError, match=r"algorithm: must be one of 'br', 'gzip', got 'x'"):
        choice("x", "algorithm", ("br", "gzip"))
    with pytest.raises(ConfigError):
        choice([], "algorithm", {"br"})  # unhashable: refused, not a TypeError
    assert url_with_scheme("redis://h:6379/0", "url", {"redis", "rediss"})
    with pytest.raises(ConfigError, match="scheme 'http'") as info:
        url_with_scheme("http://user:s3cret@h/", "url", {"redis"})
    assert "s3cret" not in str(info.value)  # the URL itself is never quoted
    with pytest.raises(ConfigError, match="must be a URL"):
        url_with_scheme("s3cret-host", "url", {"redis"})


def test_validators_as_attrs_validators_name_the_field() -> None:
    @attrs.frozen
    class Limits:
        size: int = attrs.field(validator=as_attrs(positive_int))
        quality: int = attrs.field(default=80, validator=as_attrs(int_in_range, 1, 100))

    assert Limits(3).size == 3
    with pytest.raises(ConfigError, match=r"^size: must be an integer > 0") as info:
        Limits(0)
    assert info.value.key == "size"
    with pytest.raises(ConfigError, match=r"^quality:"):
        Limits(3, quality=0)


def test_at_least_and_section_names_for_settings() -> None:
    assert at_least(0, "retries", 0, integer=True) == 0
    assert at_least(0.5, "factor", 0, strict=True) == 0.5
    with pytest.raises(ConfigError, match=r"^retries: must be an integer >= 0, got 1\.5$"):
        at_least(1.5, "retries", 0, integer=True)
    with pytest.raises(ConfigError, match=r"^factor: must be a number > 0, got 0$"):
        at_least(0, "factor", 0, strict=True)
    with pytest.raises(ConfigError):
        at_least(math.nan, "factor", 0)

    @attrs.frozen
    class Section:
        size: int = attrs.field(
            validator=as_attrs(positive_int, name=lambda inst, a: f"cache.{a.name}")
        )

    with pytest.raises(ConfigError, match=r"^cache\.size: must be an integer > 0") as info:
        Section(0)
    assert info.value.key == "cache.size"


# -- percentile, lazy exports -----------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.0
    assert percentile([1, 2, 3, 4], 1.0) == 4.0
    assert percentile([1, 2, 3, 4], 0.0) == 1.0
    hundred = [float(i) for i in range(1, 101)]
    assert percentile(hundred, 0.95) == 95.0  # float noise in 0.95 * 100 moves no rank
    assert percentile(hundred, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_lazy_exports_load_on_first_access_and_publish_the_public_path() -> None:
    namespace: dict[str, Any] = {"__all__": ["MemoryCache"]}
    getattr_, dir_ = lazy_exports("leadperf.cache", namespace, {"MemoryCache": "._memory"})
    assert "MemoryCache" in dir_()
    assert "MemoryCache" not in namespace
    cls = getattr_("MemoryCache")
    assert cls is MemoryCache
    assert namespace["MemoryCache"] is cls
    assert cls.__module__ == "leadperf.cache"
    with pytest.raises(AttributeError, match=r"'leadperf\.cache' has no attribute 'Nope'"):
        getattr_("Nope")


def test_import_leadperf_stays_light() -> None:
    code = (
        "import sys, leadperf, leadperf.cache, leadperf.optimize;"
        "heavy = [m for m in ('redis', 'psycopg', 'selenium', 'PIL', 'fastapi', 'psycopg_pool')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- errors moved into errors.py ---------------------------------------------------------------


def test_moved_errors_keep_their_old_import_paths() -> None:
    from leadperf.cache import ValueTooLargeError as FromCache
    from leadperf.optimize import TaskQueueFullError as FromOptimize
    from leadperf.optimize.tasks import TaskQueueFullError as FromTasks

    assert FromCache is ValueTooLargeError
    assert issubclass(ValueTooLargeError, SerializationError)
    assert FromOptimize is FromTasks is TaskQueueFullError
    assert issubclass(TaskQueueFullError, LeadperfError)
    err = RowValueError("bad", row=3, column="score")
    assert isinstance(err, ConfigError)
    assert (err.row, err.column, err.key) == (3, "score", "rows")


# -- MemoryCache.trim ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_cache_trim_evicts_least_recently_used_down_to_the_bounds() -> None:
    cache = MemoryCache(max_size=100, settings=Settings())
    for i in range(100):
        await cache.set(f"k{i}", i)
    await cache.get("k0")  # now the most recently used
    cache.max_size = 40
    assert cache.trim() == 60
    stats = cache.stats()
    assert stats.size == 40
    assert stats.evictions == 60
    assert await cache.get("k0") == 0  # touched last: kept
    assert await cache.get("k1") is None  # least recently used: gone
    assert await cache.get("k99") == 99
    assert cache.trim() == 0  # already within bounds
    # The byte bound too: halve it and the bytes held fall under it.
    cache.max_bytes = max(1, cache.size_bytes // 2)
    dropped = cache.trim()
    assert dropped > 0
    assert cache.size_bytes <= cache.max_bytes
    await cache.close()
    with pytest.raises(ClosedError):
        cache.trim()


@pytest.mark.anyio
async def test_memory_cache_trim_does_not_count_expired_entries_as_evictions() -> None:
    cache = MemoryCache(max_size=10, settings=Settings())
    await cache.set("short", 1, ttl=0.05)
    for i in range(5):
        await cache.set(f"k{i}", i)
    with anyio.fail_after(5):
        while await cache.exists("short"):
            await anyio.sleep(0.02)
    cache.max_size = 3
    assert cache.trim() == 2
    assert cache.stats().size == 3
    assert cache.stats().evictions == 2


# -- DatabaseOptimizer.apply_settings -------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.postgres
async def test_database_apply_settings_resizes_the_open_pool_live(database_url: str) -> None:
    from leadperf.optimize import DatabaseOptimizer

    base = Settings().evolve(database={"url": database_url, "pool_size": 1, "max_overflow": 0})
    async with DatabaseOptimizer(settings=base, pool_timeout=0.5) as db:
        assert (db.stats().pool_min, db.stats().pool_max) == (1, 1)
        same = await db.apply_settings(base.evolve(database={"pool_timeout": 0.5}))
        assert same == []
        bigger = base.evolve(database={"pool_size": 3, "max_overflow": 1, "pool_timeout": 5.0})
        live = await db.apply_settings(bigger)
        assert live == ["pool_size", "max_overflow", "pool_timeout"]
        assert (db.stats().pool_min, db.stats().pool_max) == (3, 4)
        with anyio.fail_after(10):  # the pool fills to its new minimum in the background
            while db.stats().pool_size < 3:
                await anyio.sleep(0.05)
        # Four connections held at once, each seen by the server as its own backend.
        pids: list[int] = []
        hold = anyio.Event()

        async def borrow() -> None:
            async with db.connection() as conn:
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                assert row is not None
                pids.append(row[0])
                await hold.wait()

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(borrow)
            with anyio.fail_after(10):
                while len(pids) < 4:
                    await anyio.sleep(0.02)
            hold.set()
        assert len(set(pids)) == 4
        assert await db.apply_settings(base) == ["pool_size", "max_overflow", "pool_timeout"]
        assert (db.stats().pool_min, db.stats().pool_max) == (1, 1)
    with pytest.raises(ClosedError):
        await db.apply_settings(bigger)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_facade_reports_the_database_fields_taken_live(
    database_url: str, unique_name: str
) -> None:
    from leadperf.optimize import PerformanceOptimizer

    s = Settings().evolve(database={"url": database_url}, monitoring={"system_monitoring": False})
    async with PerformanceOptimizer(s) as perf:
        await perf.database.fetch("SELECT 1 AS ok")
        before = perf.database.stats().pool_max
        report = await perf.apply_optimizations("performance_focused")
        db = report["parts"]["database"]
        assert "pool_size" in db["live"]
        assert "database" in report["applied_live"]
        new = perf.settings.database
        assert perf.database.stats().pool_max == new.pool_size + new.max_overflow != before


@pytest.mark.anyio
@pytest.mark.postgres
async def test_bulk_upsert_value_refusal_names_row_and_column(
    database_url: str, unique_name: str
) -> None:
    from leadperf.optimize import DatabaseOptimizer

    async with DatabaseOptimizer(database_url) as db:
        await db.execute(f"CREATE TABLE {unique_name} (id int PRIMARY KEY, score int)")
        try:
            rows = [{"id": 1, "score": 5}, {"id": 2, "score": True}]
            with pytest.raises(RowValueError, match="row 1, column 'score'") as info:
                await db.bulk_upsert(unique_name, rows, key="id")
            assert (info.value.row, info.value.column) == (1, "score")
            assert await db.fetch(f"SELECT count(*) AS n FROM {unique_name}") == [{"n": 0}]
        finally:
            await db.execute(f"DROP TABLE {unique_name}")
