from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from leadperf import ConfigError, Settings
from leadperf.config import ENV_VARS, PROFILE_DEFAULTS, YAML_KEYS


def test_defaults_are_balanced_profile() -> None:
    s = Settings()
    assert s.profile == "balanced"
    assert s.scraper.max_concurrent == 5
    assert s.chrome.pool_size == 10
    assert s.cache.default_ttl == 3600.0
    assert s.resources.screenshot_target_size_kb == 200


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.profile = "memory_focused"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.cache.max_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("profile", list(PROFILE_DEFAULTS))
def test_profiles_apply_their_values(profile: str) -> None:
    s = Settings(profile=profile)
    for section, values in PROFILE_DEFAULTS[profile].items():
        for key, value in values.items():
            assert getattr(getattr(s, section), key) == value


def test_profiles_differ_where_it_matters() -> None:
    mem, perf = Settings(profile="memory_focused"), Settings(profile="performance_focused")
    assert mem.cache.max_size < Settings().cache.max_size < perf.cache.max_size
    assert mem.chrome.pool_size < perf.chrome.pool_size
    assert mem.scraper.max_concurrent < perf.scraper.max_concurrent


def test_evolve_updates_only_given_keys() -> None:
    s = Settings(profile="memory_focused")
    t = s.evolve(scraper={"max_concurrent": 8}, log_level="DEBUG")
    assert t.scraper.max_concurrent == 8
    assert t.scraper.max_connections == s.scraper.max_connections
    assert t.cache == s.cache
    assert t.log_level == "DEBUG"
    assert s.scraper.max_concurrent == 3  # original untouched


def test_evolve_profile_rebases_sections() -> None:
    s = Settings().evolve(profile="performance_focused")
    assert s.cache.max_size == 50_000


def test_evolve_unknown_key() -> None:
    with pytest.raises(ConfigError, match="nope"):
        Settings().evolve(nope=1)
    with pytest.raises(ConfigError, match=r"scraper\.bogus"):
        Settings().evolve(scraper={"bogus": 1})


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"profile": "fastest"}, "profile"),
        ({"scraper": {"max_concurrent": 0}}, "scraper.max_concurrent"),
        ({"scraper": {"timeout": -1}}, "scraper.timeout"),
        ({"scraper": {"engine": "curl"}}, "scraper.engine"),
        ({"cache": {"compression": "zstd"}}, "cache.compression"),
        ({"cache": {"max_size": True}}, "cache.max_size"),
        ({"cache": {"compression_threshold": -1}}, "cache.compression_threshold"),
        ({"cache": {"enabled": 1}}, "cache.enabled"),
        ({"database": {"pool_timeout": float("nan")}}, "database.pool_timeout"),
        ({"monitoring": {"metrics_interval": "60"}}, "monitoring.metrics_interval"),
        ({"resources": {"image_quality": 101}}, "resources.image_quality"),
        ({"log_level": "LOUD"}, "log_level"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert key in str(info.value)


def test_from_env_reads_every_documented_name(tmp_env: pytest.MonkeyPatch) -> None:
    values = {
        "DATABASE_URL": "postgresql://u:secret@db/x",
        "REDIS_URL": "redis://:secret@r:6379/0",
        "REDIS_ENABLED": "true",
        "CHROME_POOL_SIZE": "3",
        "CHROME_IDLE_TIMEOUT": "45",
        "ASYNC_MAX_CONCURRENT": "7",
        "ASYNC_TIMEOUT": "12.5",
        "ASYNC_MAX_CONNECTIONS": "70",
        "SCREENSHOT_TARGET_SIZE_KB": "150",
        "IMAGE_COMPRESSION_QUALITY": "80",
        "PERFORMANCE_CACHE_TTL": "60",
        "PERFORMANCE_CACHE_MAX_SIZE": "500",
        "PERFORMANCE_MONITORING_ENABLED": "0",
        "DB_POOL_SIZE": "4",
        "DB_MAX_OVERFLOW": "6",
        "DB_POOL_TIMEOUT": "9",
        "LOG_LEVEL": "debug",
    }
    for k, v in values.items():
        tmp_env.setenv(k, v)
    s = Settings.from_env()
    assert s.database.url == "postgresql://u:secret@db/x"
    assert s.cache.redis_url == "redis://:secret@r:6379/0"
    assert s.cache.redis_enabled is True
    assert (s.chrome.pool_size, s.chrome.idle_timeout) == (3, 45.0)
    assert (s.scraper.max_concurrent, s.scraper.timeout, s.scraper.max_connections) == (7, 12.5, 70)
    assert (s.resources.screenshot_target_size_kb, s.resources.image_quality) == (150, 80)
    assert (s.cache.default_ttl, s.cache.max_size) == (60.0, 500)
    assert s.monitoring.enabled is False
    assert (s.database.pool_size, s.database.max_overflow, s.database.pool_timeout) == (4, 6, 9.0)
    assert s.log_level == "DEBUG"
    assert set(values) <= set(ENV_VARS)


def test_env_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="ASYNC_MAX_CONCURRENT") as info:
        Settings.from_env({"ASYNC_MAX_CONCURRENT": "lots"})
    assert info.value.key == "ASYNC_MAX_CONCURRENT"
    with pytest.raises(ConfigError, match="REDIS_ENABLED"):
        Settings.from_env({"REDIS_ENABLED": "maybe"})
    with pytest.raises(ConfigError, match=r"scraper\.max_concurrent"):
        Settings.from_env({"ASYNC_MAX_CONCURRENT": "-2"})


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "performance.yaml"
    p.write_text(text)
    return p


YAML = """
performance:
  cache:
    enabled: true
    redis_url: redis://127.0.0.1:6379/1
    default_ttl: 120
    max_size: 300
    compression: gzip
  database:
    pool_size: 3
    max_overflow: 2
    pool_timeout: 5
    enable_query_cache: false
  monitoring:
    enabled: true
    metrics_interval: 15
    system_monitoring: false
"""


def test_from_yaml_reads_documented_keys(tmp_path: Path) -> None:
    s = Settings.from_yaml(_write(tmp_path, YAML), environ={})
    assert s.cache.redis_url == "redis://127.0.0.1:6379/1"
    assert (s.cache.default_ttl, s.cache.max_size, s.cache.compression) == (120.0, 300, "gzip")
    assert (s.database.pool_size, s.database.max_overflow, s.database.pool_timeout) == (3, 2, 5.0)
    assert s.database.enable_query_cache is False
    assert (s.monitoring.metrics_interval, s.monitoring.system_monitoring) == (15.0, False)
    for key in ("enabled", "redis_url", "default_ttl", "max_size", "compression"):
        assert key in YAML_KEYS["cache"]


def test_precedence_arguments_over_env_over_yaml_over_profile(tmp_path: Path) -> None:
    path = _write(tmp_path, YAML + "  profile: memory_focused\n")
    only_yaml = Settings.from_yaml(path, environ={})
    assert only_yaml.profile == "memory_focused"
    assert only_yaml.cache.max_size == 300  # YAML over profile (2000)
    assert only_yaml.chrome.pool_size == 3  # profile default where YAML is silent
    env = {"PERFORMANCE_CACHE_MAX_SIZE": "400", "PERFORMANCE_CACHE_TTL": "90"}
    with_env = Settings.from_yaml(path, environ=env)
    assert with_env.cache.max_size == 400
    assert with_env.cache.default_ttl == 90.0
    explicit = Settings.from_yaml(path, environ=env, cache={"max_size": 500})
    assert explicit.cache.max_size == 500
    assert explicit.cache.default_ttl == 90.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("performance:\n  cache:\n    max_sise: 3\n", "performance.cache.max_sise"),
        ("performance:\n  caches: {}\n", "performance.caches"),
        ("performance:\n  cache:\n    max_size: many\n", "performance.cache.max_size"),
        ("performance:\n  monitoring:\n    enabled: perhaps\n", "performance.monitoring.enabled"),
        ("settings:\n  cache: {}\n", "settings"),
    ],
)
def test_yaml_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_yaml(_write(tmp_path, text), environ={})
    assert info.value.key == key


def test_yaml_missing_file_and_bad_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Settings.from_yaml(_write(tmp_path, "performance: [unclosed\n"))


def test_repr_masks_credentials() -> None:
    s = Settings().evolve(
        database={"url": "postgresql://user:hunter2@db:5432/x"},
        cache={"redis_url": "redis://:hunter2@r:6379/0"},
    )
    text = repr(s)
    assert "hunter2" not in text
    assert "user:***@db:5432" in text
    assert s.database.url is not None
    assert "hunter2" in s.database.url


def test_as_dict_is_json_able_and_masked() -> None:
    s = Settings().evolve(database={"url": "postgresql://u:hunter2@db/x"})
    data = json.loads(json.dumps(s.as_dict()))
    assert data["database"]["url"] == "postgresql://u:***@db/x"
    assert data["scraper"]["max_concurrent"] == 5
    assert data["profile"] == "balanced"


SEED_YAML = """\
performance:
  cache:
    enabled: true
    redis_url: "redis://localhost:6379/0"
    default_ttl: 3600
    max_size: 10000
    compression: true
  database:
    pool_size: 20
    max_overflow: 30
    pool_timeout: 30
    enable_query_cache: true
  monitoring:
    enabled: true
    metrics_interval: 60
    system_monitoring: true
"""


def test_seed_yaml_is_accepted_as_written(tmp_path: Path) -> None:
    path = tmp_path / "performance.yaml"
    path.write_text(SEED_YAML)
    s = Settings.from_yaml(path, environ={})
    assert s.cache.compression == "br"  # true: the default compressor
    assert s.cache.redis_enabled  # a Redis URL alone means "use it"
    assert (s.database.pool_size, s.database.max_overflow) == (20, 30)
    path.write_text(SEED_YAML.replace("compression: true", "compression: false"))
    assert Settings.from_yaml(path, environ={}).cache.compression == "none"
    assert Settings(cache={"compression": True}).cache.compression == "br"


def test_from_env_reads_leadperf_config_then_the_default_file(
    tmp_path: Path, tmp_env: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "named.yaml"
    named.write_text("performance:\n  profile: memory_focused\n  cache: {default_ttl: 120}\n")
    env = {"LEADPERF_CONFIG": str(named), "PERFORMANCE_CACHE_TTL": "90"}
    s = Settings.from_env(env)
    assert s.profile == "memory_focused"
    assert s.cache.default_ttl == 90.0  # the environment wins over the file
    tmp_env.chdir(tmp_path)
    assert Settings.from_env({}).profile == "balanced"  # no config/performance.yaml yet
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "performance.yaml").write_text(SEED_YAML)
    assert Settings.from_env({}).database.pool_size == 20
    with pytest.raises(ConfigError, match="cannot read settings file"):
        Settings.from_env({"LEADPERF_CONFIG": str(tmp_path / "missing.yaml")})


def test_redis_url_alone_selects_redis() -> None:
    from leadperf.cache import MemoryCache, TieredCache, from_settings

    s = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/15"})
    assert s.cache.redis_enabled
    assert isinstance(from_settings(s), TieredCache)
    off = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/15", "REDIS_ENABLED": "false"})
    assert isinstance(from_settings(off), MemoryCache)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DATABASE_URL": "mysql://lead:hunter2@db/x"}, "database.url"),
        ({"DATABASE_URL": "not a url"}, "database.url"),
        ({"REDIS_URL": "http://cache:6379"}, "cache.redis_url"),
        ({"LEADPERF_CACHE_URL": "ftp://x"}, "cache.url"),
    ],
)
def test_urls_are_validated_without_echoing_passwords(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.key == key
    assert "hunter2" not in str(info.value)


def test_memory_and_task_sections() -> None:
    s = Settings.from_env({"LEADPERF_MEMORY_LIMIT_MB": "768"})
    assert s.memory.limit_mb == 768.0
    assert Settings(profile="memory_focused").tasks.workers < Settings().tasks.workers
    with pytest.raises(ConfigError, match=r"memory\.guard_ratio"):
        Settings(memory={"guard_ratio": 1.5})
    assert "memory" in YAML_KEYS
    assert "tasks" in YAML_KEYS


@pytest.mark.postgres
def test_suite_creates_its_database_on_a_fresh_server(database_url: str, unique_name: str) -> None:
    import psycopg
    from psycopg import conninfo

    from conftest import create_missing_database

    url = conninfo.make_conninfo(database_url, dbname=unique_name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(url, connect_timeout=3).close()
    assert create_missing_database(url)
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (unique_name,)
        assert not create_missing_database(url)  # exists now: nothing to do
    finally:
        admin = conninfo.make_conninfo(database_url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{unique_name}" WITH (FORCE)')
    dead = "postgresql://postgres@127.0.0.1:1/test"
    assert not create_missing_database(dead)


def test_scale_section_from_env_and_yaml_with_env_winning(tmp_path: Path) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text(
        "performance:\n  scale:\n    limiter_url: redis://127.0.0.1:6379/3\n"
        "    dedup_url: postgresql://u:pw@db/leads\n    lease_seconds: 12\n"
        "    namespace: crawl-a\n",
        encoding="utf-8",
    )
    s = Settings.from_yaml(path, environ={})
    assert s.scale.limiter_url == "redis://127.0.0.1:6379/3"
    assert s.scale.dedup_url == "postgresql://u:pw@db/leads"
    assert s.scale.lease_seconds == 12.0
    assert s.scale.namespace == "crawl-a"
    env = {
        "LEADPERF_LIMITER_URL": "rediss://:s3cret@cache:6380/0",
        "LEADPERF_DEDUP_URL": "redis://127.0.0.1:6379/4",
        "LEADPERF_LIMITER_LEASE": "7.5",
        "LEADPERF_SCALE_NAMESPACE": "crawl-b",
    }
    s = Settings.from_yaml(path, environ=env)
    assert (s.scale.limiter_url, s.scale.dedup_url) == (
        "rediss://:s3cret@cache:6380/0",
        "redis://127.0.0.1:6379/4",
    )
    assert (s.scale.lease_seconds, s.scale.namespace) == (7.5, "crawl-b")
    assert Settings().scale.limiter_url is None
    assert Settings().scale.lease_seconds == 30.0
    assert set(YAML_KEYS["scale"]) == {"limiter_url", "dedup_url", "lease_seconds", "namespace"}
    assert ENV_VARS["LEADPERF_LIMITER_LEASE"] == ("scale", "lease_seconds")


def test_scale_urls_are_masked_in_repr_as_dict_and_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from leadperf.cli import main

    env = {
        "LEADPERF_LIMITER_URL": "redis://worker:limiterpw@redis.internal:6379/0",
        "LEADPERF_DEDUP_URL": "postgresql://app:deduppw@db.internal/leads",
    }
    s = Settings.from_env(env)
    for shown in (repr(s), repr(s.scale), json.dumps(s.as_dict())):
        assert "limiterpw" not in shown
        assert "deduppw" not in shown
        assert "redis.internal" in shown
        assert "db.internal" in shown
    assert s.as_dict()["scale"]["limiter_url"] == "redis://worker:***@redis.internal:6379/0"
    monkeypatch.delenv("LEADPERF_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "limiterpw" not in out
    assert "deduppw" not in out
    assert json.loads(out)["scale"]["dedup_url"] == "postgresql://app:***@db.internal/leads"


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"LEADPERF_LIMITER_URL": "postgresql://u:pw@db/x"}, "scale.limiter_url"),
        ({"LEADPERF_LIMITER_URL": "redis://u:pw@ host/0"}, "scale.limiter_url"),
        ({"LEADPERF_DEDUP_URL": "memory://u:pw@x"}, "scale.dedup_url"),
        ({"LEADPERF_LIMITER_LEASE": "soon"}, "LEADPERF_LIMITER_LEASE"),
        ({"LEADPERF_LIMITER_LEASE": "0"}, "scale.lease_seconds"),
        ({"LEADPERF_LIMITER_LEASE": "inf"}, "scale.lease_seconds"),
        ({"LEADPERF_SCALE_NAMESPACE": "has space"}, "scale.namespace"),
    ],
)
def test_bad_scale_values_name_the_key_without_the_password(
    source: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(source)
    assert info.value.key == key
    assert key in str(info.value)
    assert "pw@" not in str(info.value)


def test_unknown_scale_yaml_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text("performance:\n  scale:\n    limiter: redis://x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.from_yaml(path, environ={})
    assert info.value.key == "performance.scale.limiter"
    with pytest.raises(ConfigError, match=r"scale\.lease_secs"):
        Settings(scale={"lease_secs": 5})


@pytest.mark.parametrize("value", [float("inf"), ".inf", float("nan")])
def test_metrics_interval_refuses_non_finite_values(value: object, tmp_path: Path) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text(
        f"performance:\n  monitoring:\n    metrics_interval: {value}\n", encoding="utf-8"
    )

    def build() -> Settings:
        if isinstance(value, str):  # YAML's infinity
            return Settings.from_yaml(path, environ={})
        return Settings(monitoring={"metrics_interval": value})

    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.key == "monitoring.metrics_interval"
    assert "finite" in str(info.value)
    assert Settings(monitoring={"metrics_interval": 0.5}).monitoring.metrics_interval == 0.5
