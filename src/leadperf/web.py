"""A mountable FastAPI router over :class:`~leadperf.optimize.PerformanceOptimizer`.

>>> app.include_router(create_router(perf, admin_token=os.environ["LEADPERF_ADMIN_TOKEN"]))

Needs ``pip install 'leadperf[web]'``. The router has no logic of its own: every route
asks the optimizer. Routes that change state (``POST /optimize/{profile}``,
``POST /cache/clear``) answer 403 until the host opens them with ``admin_token=`` (a
Bearer token, compared in constant time) or ``admin_dependency=`` (its own FastAPI
dependency, e.g. its session check).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures'
# annotations at runtime, and the response models must be real classes.

import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._util import require
from .errors import ConfigError, LeadperfError

require("fastapi", "web")

from fastapi import APIRouter, Depends, HTTPException, Request, Response  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer  # noqa: E402
from pydantic import BaseModel  # noqa: E402

if TYPE_CHECKING:
    from .optimize.optimizer import PerformanceOptimizer

# The response models are the REST API's documented shapes (its OpenAPI schemas).
__all__ = [
    "BackendCheck",
    "CacheStatsResponse",
    "ClearResponse",
    "HealthResponse",
    "MemoryStatus",
    "OptimizeResponse",
    "PartChanges",
    "ProcessStatus",
    "RecommendationModel",
    "StatusResponse",
    "create_router",
]

log = logging.getLogger("leadperf.web")
_MIN_TOKEN = 16


class BackendCheck(BaseModel):
    """One backend's real check."""

    configured: bool
    ok: bool
    backend: str | None
    latency_ms: float | None
    error: str | None


class MemoryStatus(BaseModel):
    percent: float
    used_mb: float
    available_mb: float
    container_used_mb: float | None
    container_limit_mb: float | None


class ProcessStatus(BaseModel):
    rss_mb: float
    threads: int
    children: int
    children_rss_mb: float


class StatusResponse(BaseModel):
    """``GET /status``: what ``leadperf status`` shows; 503 when a backend is down."""

    ok: bool
    profile: str
    timestamp: float
    cpu_percent: float
    memory: MemoryStatus
    process: ProcessStatus
    backends: dict[str, BackendCheck]


class HealthResponse(BaseModel):
    """``GET /health``: ``ok`` or ``degraded`` (503) after checking every backend."""

    status: str
    profile: str
    backends: dict[str, BackendCheck]


class CacheStatsResponse(BaseModel):
    backend: str
    hits: int
    misses: int
    hit_rate: float
    sets: int
    deletes: int
    evictions: int
    errors: int
    size: int | None


class RecommendationModel(BaseModel):
    area: str
    severity: str
    message: str
    setting: str | None
    suggested: Any
    metric: str | None
    value: float | None


class PartChanges(BaseModel):
    live: dict[str, list[Any]]
    on_reopen: dict[str, list[Any]]
    entries_dropped: int = 0


class OptimizeResponse(BaseModel):
    """``POST /optimize/{profile}``: the changes, per part live or on reopen."""

    profile_applied: str
    previous_profile: str
    changes: dict[str, list[Any]]
    parts: dict[str, PartChanges]
    applied_live: list[str]
    gc_thresholds: list[int]
    previous_gc_thresholds: list[int]


class ClearResponse(BaseModel):
    """``POST /cache/clear``: how many keys went."""

    removed: int
    pattern: str | None


def _error_status(exc: LeadperfError) -> int:
    return 400 if isinstance(exc, ConfigError | ValueError) else 503


def _admin_guard(admin_token: str | None, admin_dependency: Callable[..., Any] | None) -> list[Any]:
    """Dependencies that close the state-changing routes unless the host opened them."""
    if admin_token is None and admin_dependency is None:

        async def closed() -> None:
            raise HTTPException(
                status_code=403,
                detail="state-changing routes are closed: the host opens them with "
                "create_router(perf, admin_token=...) or admin_dependency=...",
            )

        return [Depends(closed)]
    deps: list[Any] = []
    if admin_token is not None:
        expected = admin_token.encode()
        bearer = HTTPBearer(auto_error=False)

        async def token(
            request: Request,
            credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
        ) -> None:
            given = credentials.credentials.encode() if credentials is not None else b""
            if not hmac.compare_digest(given, expected):
                client = request.client.host if request.client else "?"
                # Never the token itself: only that one was missing or wrong.
                log.warning(
                    "rejected %s %s from %s: %s admin token",
                    request.method,
                    request.url.path,
                    client,
                    "missing" if credentials is None else "wrong",
                )
                raise HTTPException(
                    status_code=401,
                    detail="missing or wrong admin token (Authorization: Bearer ...)",
                    headers={"WWW-Authenticate": "Bearer"},
                )

        deps.append(Depends(token))
    if admin_dependency is not None:
        deps.append(Depends(admin_dependency))
    return deps


def create_router(
    perf: "PerformanceOptimizer | None" = None,
    prefix: str = "/performance",
    admin_token: str | None = None,
    admin_dependency: Callable[..., Any] | None = None,
) -> APIRouter:
    """Routes under ``prefix``: ``GET /status``, ``/health``, ``/metrics`` (JSON, or
    Prometheus text for ``Accept: text/plain``), ``/metrics/prometheus``,
    ``/cache/stats``, ``/recommendations``, ``/settings``, ``/analysis``, ``/profiles``;
    ``POST /optimize/{profile}`` and ``POST /cache/clear?pattern=...`` (closed: 403).

    Args:
        perf: the optimizer to serve (default: :func:`~leadperf.get_performance_optimizer`).
        prefix: path prefix ("" for none).
        admin_token: opens the POST routes to ``Authorization: Bearer <admin_token>``
            (at least 16 characters); a missing or wrong token is 401.
        admin_dependency: a FastAPI dependency of the host's own that guards the POST
            routes (it raises to refuse); with ``admin_token`` both must pass.

    Returns:
        The FastAPI ``APIRouter``; mount it with ``app.include_router(router)``.

    Raises:
        ConfigError: a short or non-string ``admin_token``, or a bad prefix.
    """
    short = not isinstance(admin_token, str) or len(admin_token) < _MIN_TOKEN
    if admin_token is not None and short:
        raise ConfigError(
            f"admin_token must be a string of at least {_MIN_TOKEN} characters "
            "(e.g. secrets.token_urlsafe(32))",
            key="admin_token",
        )
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError(f"prefix must start with '/' and not end with it, got {prefix!r}")
    from prometheus_client import CONTENT_TYPE_LATEST

    from .optimize.optimizer import get_performance_optimizer
    from .optimize.profiles import PROFILES

    def optimizer() -> "PerformanceOptimizer":
        return perf if perf is not None else get_performance_optimizer()

    # The routes are closures over ``optimizer`` and the admin guard, declared in one place
    # as FastAPI apps usually are; each is a few lines that ask the facade.
    router = APIRouter(prefix=prefix, tags=["leadperf"])
    admin = _admin_guard(admin_token, admin_dependency)
    prom: dict[int | str, dict[str, Any]] = {
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}
    }
    down_status: dict[int | str, dict[str, Any]] = {503: {"model": StatusResponse}}
    down_health: dict[int | str, dict[str, Any]] = {503: {"model": HealthResponse}}

    @router.get("/status", response_model=StatusResponse, responses=down_status)
    async def status(response: Response) -> dict[str, Any]:
        """Host, process and browser memory, each backend's check; 503 when one is down."""
        st = await optimizer().status()
        if not st["ok"]:
            response.status_code = 503
        return st

    @router.get("/health", response_model=HealthResponse, responses=down_health)
    async def health(response: Response) -> dict[str, Any]:
        """``ok`` when every configured backend answers, else ``degraded`` with 503."""
        p = optimizer()
        if p.closed:
            response.status_code = 503
            return {"status": "closed", "profile": p.settings.profile, "backends": {}}
        checks = await p.check_backends()
        ok = all(c["ok"] for c in checks.values())
        if not ok:
            response.status_code = 503
        state = "ok" if ok else "degraded"
        return {"status": state, "profile": p.settings.profile, "backends": checks}

    @router.get("/metrics", response_model=dict[str, dict[str, float]], responses=prom)
    async def metrics(request: Request) -> Any:
        """Every part's numbers as JSON; Prometheus text when the client asks for text/plain."""
        accept = request.headers.get("accept", "")
        if "text/plain" in accept and "application/json" not in accept:
            text = await optimizer().metrics_prometheus()
            return Response(text, media_type=CONTENT_TYPE_LATEST)
        return await optimizer().metrics()

    @router.get("/metrics/prometheus", response_class=Response, responses=prom)
    async def metrics_prometheus() -> Response:
        """Prometheus text exposition of every part's numbers."""
        return Response(await optimizer().metrics_prometheus(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/cache/stats", response_model=CacheStatsResponse)
    async def cache_stats() -> Any:
        """The cache's counters: hits, misses, hit rate, sets, evictions, errors, size."""
        return optimizer().cache.stats()

    @router.get("/recommendations", response_model=list[RecommendationModel])
    async def recommendations() -> list[dict[str, Any]]:
        """What to change, with the figure that triggered each recommendation."""
        return [r.as_dict() for r in await optimizer().recommendations()]

    @router.get("/settings", response_model=dict[str, Any])
    async def settings() -> dict[str, Any]:
        """The effective settings (URL passwords masked)."""
        return optimizer().settings.as_dict()

    @router.get("/analysis", response_model=dict[str, Any])
    async def analysis() -> dict[str, Any]:
        """A full performance analysis."""
        return await optimizer().run_performance_analysis()

    @router.get("/profiles", response_model=dict[str, str])
    async def profiles() -> dict[str, str]:
        """The tuning profiles and their descriptions."""
        return {name: prof.description for name, prof in PROFILES.items()}

    @router.post("/optimize/{profile}", response_model=OptimizeResponse, dependencies=admin)
    async def optimize(profile: str) -> dict[str, Any]:
        """Apply a tuning profile (admin)."""
        try:
            return await optimizer().apply_optimizations(profile)
        except LeadperfError as exc:
            raise HTTPException(status_code=_error_status(exc), detail=str(exc)) from exc

    @router.post("/cache/clear", response_model=ClearResponse, dependencies=admin)
    async def cache_clear(pattern: str | None = None) -> dict[str, Any]:
        """Remove the cache's keys matching ``pattern`` (all when absent) in its namespace
        (admin); 503 when the cache's server is down."""
        p = optimizer()
        try:
            removed = await p.clear_cache(pattern)
        except LeadperfError as exc:
            raise HTTPException(status_code=_error_status(exc), detail=str(exc)) from exc
        return {"removed": removed, "pattern": pattern}

    return router
