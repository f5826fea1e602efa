"""The FastAPI application: ``uvicorn backend.api.main:create_app --factory``.

On start it applies migrations, provisions ``VELORA_API_TOKEN`` (hashed) and starts the reaper; on
shutdown it stops the reaper and kills ``POST /fit``'s spare prediction process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.exc import OperationalError

from backend import store
from backend.api.docs import add_schemas, error_responses, serve_docs
from backend.api.edge import EdgeMiddleware
from backend.api.hosts import HostGuardMiddleware
from backend.api.limits import BodySizeLimitMiddleware
from backend.api.quotas import SubmissionWindow
from backend.api.routes import comparisons, fit, health, presets, runs
from backend.api.validation import validation_error_response
from backend.broker import Dispatcher
from backend.db import Database
from backend.migrate import upgrade
from backend.reaper import ReaperThread
from backend.settings import Settings, get_settings
from velora_core.contract.http_api import API_PREFIX
from velora_core.contract.spec import RunSpec

log = logging.getLogger(__name__)

api_router = APIRouter(responses=error_responses(400))  # the Host guard answers every path
api_router.include_router(comparisons.router)
api_router.include_router(runs.router)
api_router.include_router(presets.router)
api_router.include_router(health.router)
api_router.include_router(fit.router)


def provision_env_token(db: Database, settings: Settings) -> None:
    """Store ``VELORA_API_TOKEN`` (hashed) so scripts and compose files can use a known token."""
    if settings.api_token is None or not settings.api_token.get_secret_value():
        return
    with db.write_session() as session:
        store.add_token(session, name="VELORA_API_TOKEN", token=settings.api_token.get_secret_value())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run in AnyIO's thread pool (40 threads by default). Under load, 40 threads
        # time-slicing the GIL make every request as slow as the slowest; a few threads serve them
        # first come, first served, which keeps p99 low (benchmarks/api_load.py).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        db = Database(settings.sqlalchemy_url)
        if settings.auto_migrate:
            upgrade(db)
        provision_env_token(db, settings)
        dispatcher = Dispatcher(settings)
        app.state.db, app.state.dispatcher = db, dispatcher
        app.state.token_touches, app.state.token_cache = {}, {}
        reaper = ReaperThread(db, dispatcher, settings) if settings.reaper_enabled else None
        if reaper is not None:
            reaper.start()
        # The imported libraries are ~10^6 long-lived objects: a full collection walking them
        # stalls every request in flight for ~60 ms. Freeze them out of the collector, and collect
        # the young generation less often (requests allocate a lot of short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            yield
        finally:
            if reaper is not None:
                reaper.stop()
            dispatcher.close()
            db.dispose()
            await fit.close_fit_line(app)  # the spare prediction process, if a POST /fit started one

    app = FastAPI(
        title="VeLoRA Bench",
        summary="Queue and compare VeLoRA, QLoRA, LoRA and full fine-tuning runs.",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # served by serve_docs, from an installed package
        redoc_url=None,  # ReDoc loads from a CDN only: no page that is blank offline
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.submissions = SubmissionWindow()
    app.state.health_lock, app.state.health_cache = asyncio.Lock(), None
    app.add_middleware(
        EdgeMiddleware, max_headers=settings.http_max_headers
    )  # NUL, nesting depth, HEAD (innermost: reads a bounded body)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(HostGuardMiddleware, settings=settings)  # outermost: checked before anything else
    app.include_router(api_router, prefix=API_PREFIX)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    add_schemas(app, (*comparisons.BODY_MODELS, RunSpec))
    serve_docs(app, openapi_url=f"{API_PREFIX}/openapi.json")

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse(status_code=503, content={"detail": "Database unavailable; try again shortly"})

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
