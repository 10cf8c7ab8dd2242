"""Settings: frozen attrs classes built from profiles, YAML, environment and arguments.

Precedence, highest first: explicit arguments > environment variables > YAML file >
profile defaults. Every env name and YAML key is listed in ``ENV_VARS`` and
``YAML_KEYS``; an unknown YAML key or a bad value raises :class:`ConfigError` naming it.

>>> s = Settings(profile="memory_focused")
>>> s.evolve(scraper={"max_concurrent": 8}).scraper.max_concurrent
8

Length: over 600 lines because the whole settings schema (nine sections with their
validators, the env and YAML name tables, the profiles' values) is kept in one place
users read; loading and coercion are small functions below it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from ._core.validate import (
    as_attrs,
    boolean,
    non_negative_int,
    positive_int,
    positive_number,
)
from ._util import mask_url, require
from .errors import ConfigError

__all__ = [
    "ENV_VARS",
    "PROFILE_DEFAULTS",
    "YAML_KEYS",
    "CacheSettings",
    "ChromeSettings",
    "DatabaseSettings",
    "MemorySettings",
    "MonitoringSettings",
    "ResourceSettings",
    "ScaleSettings",
    "ScraperSettings",
    "Settings",
    "TaskSettings",
    "profile_settings",
]

ProfileName = Literal["balanced", "memory_focused", "performance_focused"]
PROFILE_NAMES: tuple[str, ...] = ("balanced", "memory_focused", "performance_focused")
T = TypeVar("T")


# -- validators ---------------------------------------------------------------------------


def _field_name(inst: Any, attribute: attrs.Attribute[Any]) -> str:
    """A settings field as users write it: ``"section.key"`` (``"cache.max_size"``)."""
    section = _SECTION_NAMES.get(type(inst), "")
    return f"{section}.{attribute.name}" if section else attribute.name


def _check(
    ok: Callable[[Any], bool], problem: str
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def validate(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not ok(value):
            key = _field_name(inst, attribute)
            raise ConfigError(f"{key}: {problem}, got {value!r}", key=key)

    return validate


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_positive_int = as_attrs(positive_int, name=_field_name)
_non_negative_int = as_attrs(non_negative_int, name=_field_name)
# Infinity stays accepted, as it always was (an unbounded interval or timeout).
_positive_num = as_attrs(positive_number, name=_field_name, finite=False)
# For values a part refuses when infinite (a sampling interval, a lease).
_finite_num = as_attrs(positive_number, name=_field_name)
_bool = as_attrs(boolean, name=_field_name)
_opt_str = _check(lambda v: v is None or isinstance(v, str), "must be a string or null")


def _one_of(*choices: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    return _check(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _masked(value: str | None) -> str:
    return repr(mask_url(value))


def _url(*schemes: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """Validator: None, or a URL with one of ``schemes`` and a host or path after it."""

    def ok(v: Any) -> bool:
        if v is None:
            return True
        if not isinstance(v, str) or "://" not in v:
            return False
        scheme, _, rest = v.partition("://")
        blank = any(c in v for c in " \n\r\t")
        return scheme.lower() in schemes and bool(rest.strip()) and not blank

    example = " or ".join(f"{s}://..." for s in schemes[:3])
    check = _check(ok, f"must be a URL like {example}")

    def validate(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            check(inst, attribute, value)
        except ConfigError as exc:
            # Never echo a URL that may carry a password: the masked form only.
            shown = mask_url(value) if isinstance(value, str) else value
            key = exc.key or attribute.name
            raise ConfigError(
                f"{key}: must be a URL like {example}, got {shown!r}", key=key
            ) from None

    return validate


def _compression(value: Any) -> Any:
    # The seed's YAML writes ``compression: true``: the default compressor; false: none.
    if value is True:
        return "br"
    if value is False:
        return "none"
    return value


# -- sections -----------------------------------------------------------------------------


@attrs.frozen
class CacheSettings:
    """Cache: backend URL, default TTL (seconds), memory size, codec compression."""

    enabled: bool = attrs.field(default=True, validator=_bool)
    url: str | None = attrs.field(
        default=None,
        validator=_url("memory", "sqlite", "redis", "rediss", "unix", "postgresql", "postgres"),
        repr=_masked,
    )
    redis_url: str | None = attrs.field(
        default=None, validator=_url("redis", "rediss", "unix"), repr=_masked
    )
    redis_enabled: bool = attrs.field(default=False, validator=_bool)
    default_ttl: float = attrs.field(default=3600.0, validator=_positive_num)
    max_size: int = attrs.field(default=10_000, validator=_positive_int)
    compression: str = attrs.field(
        default="br", converter=_compression, validator=_one_of("br", "gzip", "none")
    )
    compression_threshold: int = attrs.field(default=1024, validator=_non_negative_int)
    pool_min_size: int = attrs.field(default=2, validator=_non_negative_int)
    pool_max_size: int = attrs.field(default=10, validator=_positive_int)
    # HMAC key(s) signing cache entries, comma-separated (the first signs); never shown.
    sign_key: str | None = attrs.field(
        default=None, validator=_opt_str, repr=lambda v: "None" if v is None else "'***'"
    )
    max_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_positive_int)
    max_value_size: int = attrs.field(default=16 * 1024 * 1024, validator=_positive_int)


@attrs.frozen
class DatabaseSettings:
    """Database: URL and psycopg-pool sizes (``pool_size`` .. ``pool_size + max_overflow``)."""

    url: str | None = attrs.field(
        default=None, validator=_url("postgresql", "postgres"), repr=_masked
    )
    pool_size: int = attrs.field(default=5, validator=_positive_int)
    max_overflow: int = attrs.field(default=5, validator=_non_negative_int)
    pool_timeout: float = attrs.field(default=30.0, validator=_positive_num)
    enable_query_cache: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen
class MonitoringSettings:
    """Monitoring: on/off, sampling interval (seconds), psutil system sampling."""

    enabled: bool = attrs.field(default=True, validator=_bool)
    # Finite: the system monitor refuses an infinite interval, so the facade could not build it.
    metrics_interval: float = attrs.field(default=60.0, validator=_finite_num)
    system_monitoring: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen
class ScraperSettings:
    """Scraper: per-platform concurrency, request timeout (seconds), connection cap, engine,
    response limits (bytes; on by default), proxy, cookies and the private-network guard."""

    max_concurrent: int = attrs.field(default=5, validator=_positive_int)
    timeout: float = attrs.field(default=30.0, validator=_positive_num)
    max_connections: int = attrs.field(default=100, validator=_positive_int)
    engine: str = attrs.field(default="aiohttp", validator=_one_of("aiohttp", "httpx", "native"))
    max_body_size: int = attrs.field(default=32 * 1024 * 1024, validator=_positive_int)
    max_head_size: int = attrs.field(default=64 * 1024, validator=_positive_int)
    max_header_count: int = attrs.field(default=100, validator=_positive_int)
    max_redirects: int = attrs.field(default=20, validator=_positive_int)
    proxy_url: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(str)),
        repr=lambda v: repr(mask_url(v)),
    )
    trust_env: bool = attrs.field(default=True, validator=_bool)
    cookies: bool = attrs.field(default=False, validator=_bool)
    allow_private_networks: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen
class ChromeSettings:
    """Chrome pool: number of instances and idle timeout (seconds)."""

    pool_size: int = attrs.field(default=10, validator=_positive_int)
    idle_timeout: float = attrs.field(default=300.0, validator=_positive_num)
    headless: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen
class ResourceSettings:
    """Resources: screenshot size budget (KB) and the highest image quality to try."""

    screenshot_target_size_kb: int = attrs.field(default=200, validator=_positive_int)
    image_quality: int = attrs.field(
        default=85, validator=_check(lambda v: _is_int(v) and 1 <= v <= 100, "must be 1..100")
    )


@attrs.frozen
class MemorySettings:
    """Memory management: the guard's limit (MB; None = the container's cgroup limit, if
    any), the fraction of it that triggers the guard, how often it checks (seconds), and
    whether to ``gc.freeze()`` long-lived objects after warm-up."""

    limit_mb: float | None = attrs.field(
        default=None,
        validator=_check(lambda v: v is None or (_is_num(v) and v > 0), "must be a number > 0"),
    )
    guard_ratio: float = attrs.field(
        default=0.9, validator=_check(lambda v: _is_num(v) and 0 < v <= 1, "must be in (0, 1]")
    )
    check_interval: float = attrs.field(default=5.0, validator=_positive_num)
    gc_freeze: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen
class TaskSettings:
    """Background tasks: queue bound (backpressure beyond it) and concurrent workers."""

    max_queued: int = attrs.field(default=1000, validator=_positive_int)
    workers: int = attrs.field(default=4, validator=_positive_int)


@attrs.frozen
class ScaleSettings:
    """Scale-out: the per-platform limiter and the dedup set every worker shares.

    ``limiter_url`` (Redis) makes the facade's scraper share each platform's concurrency,
    spacing and slow-down with every worker pointed at the same Redis and ``namespace``;
    ``dedup_url`` (Redis or PostgreSQL) makes a batch spread over workers fetch each URL
    once. ``lease_seconds``: how long a killed worker's slots stay held. ``namespace``
    prefixes the keys, so several deployments can share one Redis.
    """

    limiter_url: str | None = attrs.field(
        default=None, validator=_url("redis", "rediss", "unix"), repr=_masked
    )
    dedup_url: str | None = attrs.field(
        default=None,
        validator=_url("redis", "rediss", "unix", "postgresql", "postgres"),
        repr=_masked,
    )
    lease_seconds: float = attrs.field(default=30.0, validator=_finite_num)
    namespace: str = attrs.field(
        default="leadperf",
        validator=_check(
            lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v) is not None,
            "must be 1-64 letters, digits or _.:-",
        ),
    )


_SECTIONS: dict[str, type[Any]] = {
    "cache": CacheSettings,
    "database": DatabaseSettings,
    "monitoring": MonitoringSettings,
    "scraper": ScraperSettings,
    "chrome": ChromeSettings,
    "resources": ResourceSettings,
    "memory": MemorySettings,
    "tasks": TaskSettings,
    "scale": ScaleSettings,
}

_SECTION_NAMES: dict[type[Any], str] = {cls: name for name, cls in _SECTIONS.items()}

#: Per profile, the section values that differ from the class defaults.
PROFILE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "balanced": {},
    "memory_focused": {
        "cache": {
            "max_size": 2_000,
            "compression": "br",
            "compression_threshold": 256,
            "pool_max_size": 5,
        },
        "scraper": {"max_concurrent": 3, "max_connections": 50},
        "chrome": {"pool_size": 3, "idle_timeout": 60.0},
        "database": {"pool_size": 2, "max_overflow": 3},
        "resources": {"screenshot_target_size_kb": 150, "image_quality": 75},
        "monitoring": {"metrics_interval": 30.0},
        "tasks": {"max_queued": 200, "workers": 2},
    },
    "performance_focused": {
        # Four-hour TTL and larger pools: trade memory and staleness for fewer misses/waits.
        "cache": {
            "max_size": 50_000,
            "default_ttl": 14_400.0,
            "compression": "gzip",
            "compression_threshold": 4096,
            "pool_max_size": 20,
        },
        "scraper": {"max_concurrent": 10, "max_connections": 200},
        "chrome": {"pool_size": 16, "idle_timeout": 600.0},
        "database": {"pool_size": 10, "max_overflow": 10},
        "resources": {"screenshot_target_size_kb": 300, "image_quality": 90},
        "monitoring": {"metrics_interval": 120.0},
        "tasks": {"max_queued": 5_000, "workers": 8},
    },
}


def _check_profile(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in PROFILE_DEFAULTS:
        raise ConfigError(
            f"profile: must be one of {', '.join(PROFILE_DEFAULTS)}, got {value!r}", key="profile"
        )


def _section_default(name: str) -> Callable[[Any], Any]:
    def make(self: Settings) -> Any:
        return _SECTIONS[name](**PROFILE_DEFAULTS.get(self.profile, {}).get(name, {}))

    return make


def _convert_section(name: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return _build_section(name, dict(value), base=None)
    return value


# Named converters (one per section) so attrs' mypy plugin can type them.
def _to_cache(value: Any) -> Any:
    return _convert_section("cache", value)


def _to_database(value: Any) -> Any:
    return _convert_section("database", value)


def _to_monitoring(value: Any) -> Any:
    return _convert_section("monitoring", value)


def _to_scraper(value: Any) -> Any:
    return _convert_section("scraper", value)


def _to_chrome(value: Any) -> Any:
    return _convert_section("chrome", value)


def _to_resources(value: Any) -> Any:
    return _convert_section("resources", value)


def _to_memory(value: Any) -> Any:
    return _convert_section("memory", value)


def _to_tasks(value: Any) -> Any:
    return _convert_section("tasks", value)


def _to_scale(value: Any) -> Any:
    return _convert_section("scale", value)


def _section_type(name: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    return _check(lambda v: isinstance(v, _SECTIONS[name]), f"must be a {_SECTIONS[name].__name__}")


def _build_section(name: str, values: dict[str, Any], base: Any | None) -> Any:
    cls = _SECTIONS[name]
    fields = attrs.fields_dict(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"{name}.{key}: unknown setting; known keys are {', '.join(fields)}",
                key=f"{name}.{key}",
            )
    if base is None:
        return cls(**values)
    return attrs.evolve(base, **values)


@attrs.frozen
class Settings:
    """All of leadperf's settings, frozen. Change with :meth:`evolve`.

    ``Settings(profile="performance_focused")`` starts from that profile's defaults;
    sections may be passed as section objects or as mappings of their fields.
    """

    profile: str = attrs.field(default="balanced", validator=_check_profile)
    cache: CacheSettings = attrs.field(
        default=attrs.Factory(_section_default("cache"), takes_self=True),
        converter=_to_cache,
        validator=_section_type("cache"),
    )
    database: DatabaseSettings = attrs.field(
        default=attrs.Factory(_section_default("database"), takes_self=True),
        converter=_to_database,
        validator=_section_type("database"),
    )
    monitoring: MonitoringSettings = attrs.field(
        default=attrs.Factory(_section_default("monitoring"), takes_self=True),
        converter=_to_monitoring,
        validator=_section_type("monitoring"),
    )
    scraper: ScraperSettings = attrs.field(
        default=attrs.Factory(_section_default("scraper"), takes_self=True),
        converter=_to_scraper,
        validator=_section_type("scraper"),
    )
    chrome: ChromeSettings = attrs.field(
        default=attrs.Factory(_section_default("chrome"), takes_self=True),
        converter=_to_chrome,
        validator=_section_type("chrome"),
    )
    resources: ResourceSettings = attrs.field(
        default=attrs.Factory(_section_default("resources"), takes_self=True),
        converter=_to_resources,
        validator=_section_type("resources"),
    )
    memory: MemorySettings = attrs.field(
        default=attrs.Factory(_section_default("memory"), takes_self=True),
        converter=_to_memory,
        validator=_section_type("memory"),
    )
    tasks: TaskSettings = attrs.field(
        default=attrs.Factory(_section_default("tasks"), takes_self=True),
        converter=_to_tasks,
        validator=_section_type("tasks"),
    )
    scale: ScaleSettings = attrs.field(
        default=attrs.Factory(_section_default("scale"), takes_self=True),
        converter=_to_scale,
        validator=_section_type("scale"),
    )
    log_level: str = attrs.field(
        default="INFO", validator=_one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )

    def evolve(self, **changes: Any) -> Settings:
        """Return a copy with ``changes``; a section given as a mapping updates only those keys.

        Changing ``profile`` applies that profile's overrides on top of the current values
        (URLs and other settings the profile does not tune are kept).
        """
        layers: dict[str, Any] = {}
        for key, value in changes.items():
            if key in _SECTIONS and isinstance(value, Mapping):
                layers[key] = _build_section(key, dict(value), base=getattr(self, key))
            elif key in _SECTIONS or key in ("profile", "log_level"):
                layers[key] = value
            else:
                raise ConfigError(f"{key}: unknown setting", key=key)
        if "profile" in layers:
            # A new profile brings its overrides; sections given explicitly win over them.
            for section, values in PROFILE_DEFAULTS.get(layers["profile"], {}).items():
                if section not in layers:
                    layers[section] = _build_section(section, dict(values), getattr(self, section))
        return attrs.evolve(self, **layers)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able nested dict of every setting, with URL passwords masked (for output)."""
        data = attrs.asdict(self)
        for section in data.values():
            if isinstance(section, dict):
                for key, value in section.items():
                    if "url" in key and isinstance(value, str):
                        section[key] = mask_url(value)
                    elif key == "sign_key" and value is not None:
                        section[key] = "***"
        return data

    # -- loaders --------------------------------------------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        profile: str | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from environment variables (see ``ENV_VARS``) over profile defaults.

        ``overrides`` (``cache={...}``, ``log_level=...``) win over the environment. The YAML
        file named by ``LEADPERF_CONFIG``, else ``config/performance.yaml`` in the current
        directory when it exists, is read first (the environment wins over it).
        """
        env = os.environ if environ is None else environ
        path = env.get("LEADPERF_CONFIG") or None
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        yaml_data = _read_yaml(Path(path)) if path else None
        return cls._load(yaml_data=yaml_data, environ=environ, profile=profile, overrides=overrides)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
        profile: str | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from a YAML file's ``performance:`` mapping (see ``YAML_KEYS``).

        Environment variables still win over the file, so a deployment can override it;
        pass ``environ={}`` to read the file alone. Needs ``pip install 'leadperf[yaml]'``.
        """
        return cls._load(
            yaml_data=_read_yaml(Path(path)),
            environ=environ,
            profile=profile,
            overrides=overrides,
        )

    @classmethod
    def _load(
        cls,
        *,
        yaml_data: dict[str, Any] | None,
        environ: Mapping[str, str] | None,
        profile: str | None,
        overrides: dict[str, Any],
    ) -> Settings:
        env = os.environ if environ is None else environ
        layers: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        top: dict[str, Any] = {}
        _yaml_layer(yaml_data or {}, layers, top)  # the lowest explicit layer
        _env_layer(env, layers, top)  # environment over YAML

        # A Redis URL given without REDIS_ENABLED means "use it" (the seed needed both, and
        # silently fell back to memory when the flag was missing); REDIS_ENABLED=false wins.
        if layers["cache"].get("redis_url") and "redis_enabled" not in layers["cache"]:
            layers["cache"]["redis_enabled"] = True

        # Explicit arguments over everything.
        chosen_profile = profile or overrides.pop("profile", None) or top.pop("profile", None)
        top.pop("profile", None)
        if "log_level" in overrides:
            top["log_level"] = overrides.pop("log_level")
        for key, value in overrides.items():
            if key not in _SECTIONS:
                raise ConfigError(f"{key}: unknown setting", key=key)
            if isinstance(value, Mapping):
                layers[key].update(value)
            else:
                layers[key] = attrs.asdict(value, recurse=False)

        base = Settings(profile=chosen_profile or "balanced", **top)
        sections = {name: values for name, values in layers.items() if values}
        return base.evolve(**sections) if sections else base


def _yaml_layer(
    yaml_data: Mapping[str, Any], layers: dict[str, dict[str, Any]], top: dict[str, Any]
) -> None:
    """Add the YAML file's values to ``layers`` (per section) and ``top``, checked."""
    for section, values in yaml_data.items():
        if section in ("profile", "log_level"):
            top[section] = values
            continue
        if section not in _SECTIONS:
            raise ConfigError(
                f"performance.{section}: unknown section; known sections are "
                f"{', '.join(_SECTIONS)}, profile, log_level",
                key=f"performance.{section}",
            )
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"performance.{section}: must be a mapping", key=f"performance.{section}"
            )
        fields = attrs.fields_dict(_SECTIONS[section])
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"performance.{section}.{key}: unknown key; known keys are {', '.join(fields)}",
                    key=f"performance.{section}.{key}",
                )
            if key == "compression" and isinstance(value, bool):
                value = _compression(value)
            layers[section][key] = _coerce(f"performance.{section}.{key}", value, fields[key].type)


def _env_layer(
    env: Mapping[str, str], layers: dict[str, dict[str, Any]], top: dict[str, Any]
) -> None:
    """Add the environment's values (``ENV_VARS``) over the YAML ones, coerced and checked."""
    for env_name, (section, key) in ENV_VARS.items():
        raw = env.get(env_name)
        if raw is None or raw == "":
            continue
        if section == "":
            top[key] = _coerce(env_name, raw.upper() if key == "log_level" else raw, "str")
        else:
            ftype = attrs.fields_dict(_SECTIONS[section])[key].type
            layers[section][key] = _coerce(env_name, raw, ftype)


#: Read by :meth:`Settings.from_env` when present and ``LEADPERF_CONFIG`` is not set.
DEFAULT_CONFIG_FILE = "config/performance.yaml"


def _read_yaml(p: Path) -> dict[str, Any]:
    """The ``performance:`` mapping of YAML file ``p``; ConfigError when unusable."""
    yaml = require("yaml", "yaml", "pyyaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {p} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping) or not isinstance(data.get("performance", {}), Mapping):
        raise ConfigError(
            f"settings file {p}: expected a top-level 'performance:' mapping", key="performance"
        )
    unknown_top = set(data) - {"performance"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise ConfigError(f"{key}: unknown top-level key in {p}; use 'performance:'", key=key)
    return dict(data.get("performance") or {})


def _coerce(key: str, value: Any, ftype: Any) -> Any:
    """Turn a YAML or env value into the field's type, or raise ConfigError naming ``key``."""
    t = str(ftype)
    if "bool" in t:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: must be true or false, got {value!r}", key=key)
    if t == "int":
        if _is_int(value):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be an integer, got {value!r}", key=key) from None
    if t == "float | None" and value is None:
        return None
    if t in ("float", "float | None"):
        if _is_num(value):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be a number, got {value!r}", key=key) from None
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}", key=key)
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: Environment variable -> (section, field). Section "" is a top-level field.
ENV_VARS: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("cache", "redis_url"),
    "REDIS_ENABLED": ("cache", "redis_enabled"),
    "CHROME_POOL_SIZE": ("chrome", "pool_size"),
    "CHROME_IDLE_TIMEOUT": ("chrome", "idle_timeout"),
    "ASYNC_MAX_CONCURRENT": ("scraper", "max_concurrent"),
    "ASYNC_TIMEOUT": ("scraper", "timeout"),
    "ASYNC_MAX_CONNECTIONS": ("scraper", "max_connections"),
    "SCREENSHOT_TARGET_SIZE_KB": ("resources", "screenshot_target_size_kb"),
    "IMAGE_COMPRESSION_QUALITY": ("resources", "image_quality"),
    "PERFORMANCE_CACHE_TTL": ("cache", "default_ttl"),
    "PERFORMANCE_CACHE_MAX_SIZE": ("cache", "max_size"),
    "PERFORMANCE_MONITORING_ENABLED": ("monitoring", "enabled"),
    "DB_POOL_SIZE": ("database", "pool_size"),
    "DB_MAX_OVERFLOW": ("database", "max_overflow"),
    "DB_POOL_TIMEOUT": ("database", "pool_timeout"),
    "LOG_LEVEL": ("", "log_level"),
    "LEADPERF_PROFILE": ("", "profile"),
    "LEADPERF_CACHE_URL": ("cache", "url"),
    "LEADPERF_CACHE_SIGN_KEY": ("cache", "sign_key"),
    "LEADPERF_CACHE_MAX_BYTES": ("cache", "max_bytes"),
    "LEADPERF_CACHE_MAX_VALUE_SIZE": ("cache", "max_value_size"),
    "LEADPERF_SCRAPER_ENGINE": ("scraper", "engine"),
    "LEADPERF_SCRAPER_MAX_BODY_SIZE": ("scraper", "max_body_size"),
    "LEADPERF_SCRAPER_PROXY": ("scraper", "proxy_url"),
    "LEADPERF_SCRAPER_COOKIES": ("scraper", "cookies"),
    "LEADPERF_SCRAPER_ALLOW_PRIVATE_NETWORKS": ("scraper", "allow_private_networks"),
    "LEADPERF_MEMORY_LIMIT_MB": ("memory", "limit_mb"),
    "LEADPERF_LIMITER_URL": ("scale", "limiter_url"),
    "LEADPERF_DEDUP_URL": ("scale", "dedup_url"),
    "LEADPERF_LIMITER_LEASE": ("scale", "lease_seconds"),
    "LEADPERF_SCALE_NAMESPACE": ("scale", "namespace"),
}

#: Every key a YAML file may set under ``performance:``.
YAML_KEYS: dict[str, tuple[str, ...]] = {
    "profile": (),
    "log_level": (),
    **{name: tuple(attrs.fields_dict(cls)) for name, cls in _SECTIONS.items()},
}


def profile_settings(name: str) -> Settings:
    """Return the defaults of profile ``name`` (raises ConfigError for an unknown one)."""
    return Settings(profile=name)
