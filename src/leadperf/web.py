"""A mountable FastAPI router over :class:`~leadperf.optimize.PerformanceOptimizer`.

``app.include_router(create_router(perf), prefix="/performance")``. Needs
``pip install 'leadperf[web]'``. The router has no logic of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ._util import require
from .errors import ConfigError

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .optimize.optimizer import PerformanceOptimizer

__all__ = ["create_router"]


def create_router(optimizer: PerformanceOptimizer | None = None) -> APIRouter:
    """Routes: ``GET /health``, ``/settings``, ``/analysis``, ``/metrics`` (Prometheus
    text), ``/profiles``, ``/cache/stats`` and ``POST /optimize/{profile}``.

    ``optimizer`` defaults to :func:`~leadperf.get_performance_optimizer`'s.
    """
    fastapi = require("fastapi", "web")
    from fastapi.responses import PlainTextResponse

    from .optimize.optimizer import get_performance_optimizer
    from .optimize.profiles import PROFILES

    def perf() -> PerformanceOptimizer:
        return optimizer if optimizer is not None else get_performance_optimizer()

    router: APIRouter = fastapi.APIRouter(tags=["leadperf"])

    @router.get("/health")
    async def health() -> dict[str, Any]:
        p = perf()
        return {"status": "closed" if p.closed else "ok", "profile": p.settings.profile}

    @router.get("/settings")
    async def settings() -> dict[str, Any]:
        return perf().settings.as_dict()

    @router.get("/analysis")
    async def analysis() -> dict[str, Any]:
        return await perf().run_performance_analysis()

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        p = perf()
        await p.monitor.sample_async()
        p.registry.register("system", p.monitor.latest_or_sample)
        return p.registry.to_prometheus()

    @router.get("/profiles")
    async def profiles() -> dict[str, str]:
        return {name: prof.description for name, prof in PROFILES.items()}

    @router.get("/cache/stats")
    async def cache_stats() -> dict[str, Any]:
        result: dict[str, Any] = attrs.asdict(perf().cache.stats())
        return result

    @router.post("/optimize/{profile}")
    async def optimize(profile: str) -> dict[str, Any]:
        try:
            return await perf().apply_optimizations(profile)
        except ConfigError as exc:
            raise fastapi.HTTPException(status_code=400, detail=str(exc)) from exc

    return router
