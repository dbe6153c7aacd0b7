"""The FastAPI app: OpenAI-compatible routes, the search page, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from . import errors as http_errors
from .batching import QueueFull
from .config import ServeConfig, with_store_models
from .engines import Engines
from .errors import APIError, error_response
from .guard import Guard
from .metrics import Metrics
from .previews import router as media_router
from .routes_embed import router as embed_router
from .routes_gen import router as gen_router

STATIC = Path(__file__).parent / "static"


def create_app(cfg: ServeConfig) -> Any:
    """The ASGI app serving ``cfg``'s models and store (run it with uvicorn).

    Examples
    --------
    >>> import uvicorn  # doctest: +SKIP
    >>> uvicorn.run(create_app(ServeConfig(text_model="minilm.parquet")), host="127.0.0.1")
    """
    cfg = with_store_models(cfg)
    metrics = Metrics()
    engines = Engines(cfg, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await engines.close()

    app = FastAPI(title="llm_compression", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.engines = engines
    http_errors.install(app)
    _add_busy_and_timeout(app, metrics)
    for router in (embed_router, gen_router, media_router):
        app.include_router(router)
    _add_info_routes(app, engines, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, api_key=cfg.api_key, max_body=cfg.max_body_bytes, metrics=metrics)


def _add_busy_and_timeout(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(QueueFull)
    async def _busy(_: Request, exc: QueueFull):
        metrics.observe_rejected(exc.model)
        return error_response(APIError(503, f"{exc}; retry shortly", kind="server_busy",
                                       code="queue_full", headers={"Retry-After": "1"}))  # fmt: skip

    @app.exception_handler(asyncio.TimeoutError)
    async def _timeout(_: Request, exc: asyncio.TimeoutError):
        return error_response(http_errors.from_exception(exc))


def _add_info_routes(app: FastAPI, engines: Engines, metrics: Metrics) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": mid, "object": "model", "created": 0, "owned_by": "llm_compression",
                 "purpose": role} for mid, role in engines.models().items()]  # fmt: skip
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        store = engines.store
        return {
            "status": "ok",
            "models": list(engines.models()),
            "store": None if store is None else {"tables": list(store.modalities)},
        }

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        body = metrics.render(engines.queue_depths())
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")
