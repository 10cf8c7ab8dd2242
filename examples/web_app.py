"""The REST router in a FastAPI app: reads open, POSTs behind an admin token.

Run: LEADPERF_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') \
     uvicorn --app-dir examples web_app:app --port 8000
then: curl localhost:8000/performance/status
      curl -X POST -H "Authorization: Bearer $LEADPERF_ADMIN_TOKEN" \
           localhost:8000/performance/optimize/memory_focused
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from leadperf import PerformanceOptimizer, Settings
from leadperf.web import create_router

perf = PerformanceOptimizer(Settings.from_env())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with perf:
        yield


app = FastAPI(lifespan=lifespan)
# Without a token the POST routes answer 403: closed unless the host opens them.
app.include_router(create_router(perf, admin_token=os.environ.get("LEADPERF_ADMIN_TOKEN")))
