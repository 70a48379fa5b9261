"""An OpenAI-compatible HTTP server over the continuous-batching engine, with a web chat page at `/`.

Routes (https://platform.openai.com/docs/api-reference):
  POST /v1/chat/completions, POST /v1/completions   streaming (server-sent events) or not
  POST /v1/embeddings                               when an embedder is loaded, else 404
  GET  /v1/models, /v1/models/{id}
  GET  /health, /                                   need no API key (the page asks for it)
This module wires them: the Guard middleware (API key, body size), OpenAI-style JSON for every error
({"error": {"message", "type", "param", "code"}}, unknown routes and crashes included), and the engine's
lifetime. What each route does is in server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.infer.engine import AsyncEngine, Engine
from lmforge.serve.guard import Guard
from lmforge.serve.protocol import APIError, invalid
from lmforge.serve.server import OpenAIServer

log = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "static" / "index.html"


def create_app(
    model,
    tokenizer=None,
    *,
    model_name: str,
    embedder=None,
    embedder_name: str | None = None,
    api_key: str | None = None,
    max_batch: int = 16,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int | None = None,
    default_max_tokens: int = 1024,
    max_body_bytes: int = 1_000_000,
    max_concurrent: int = 64,
    max_seq_len: int | None = None,
    num_blocks: int | None = None,
) -> FastAPI:
    """The FastAPI app serving `model` (a Transformer with a tokenizer) and optionally an embedder
    (a model with `encode(texts) -> (N, D)`, e.g. all-minilm-l6-v2).

    max_batch, max_seq_len and num_blocks configure the Engine (sequences decoded together, the longest
    sequence, KV-cache blocks). max_prompt_tokens and max_tokens_limit default to the context window (the
    model's, capped by the KV pool); a request without max_tokens gets default_max_tokens, since the
    engine reserves a request's blocks up front and a huge default would keep others waiting.
    max_concurrent bounds the sequences in flight, running or queued (503 beyond it); max_body_bytes
    bounds a request body (413 beyond it).
    """
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: pass tokenizer=... or load the model by name")
    if embedder is not None and embedder_name is None:
        raise ValueError("an embedder needs embedder_name=... (the name clients ask for)")
    if max_body_bytes < 1 or max_concurrent < 1:
        raise ValueError(
            f"max_body_bytes and max_concurrent must be >= 1, got {max_body_bytes}, {max_concurrent}"
        )
    engine = AsyncEngine(Engine(model, max_batch=max_batch, num_blocks=num_blocks, max_seq_len=max_seq_len))
    server = OpenAIServer(
        model, tokenizer, model_name=model_name, engine=engine, embedder=embedder,
        embedder_name=embedder_name, api_key=api_key, max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens,
        max_concurrent=max_concurrent,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)  # joins the engine thread: not on the event loop

    # No /docs: Swagger UI loads its scripts from a CDN. The schema stays at /openapi.json.
    app = FastAPI(title="lmforge", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.state.engine = engine
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    page = PAGE.read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {"www-authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            error = APIError(404, f"unknown route: {request.method} {request.url.path}", None, "unknown_url")
        else:
            error = APIError(e.status_code, str(e.detail))
        return JSONResponse(error.body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]  # path parameters: the JSON bodies are validated in protocol.py
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        error = invalid(f"invalid value for '{param}': {first.get('msg', 'invalid request')}", param)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, f"internal server error: {type(e).__name__}: {e}", None, "internal_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return server.health()

    @app.get("/v1/models")
    async def models() -> dict:
        return server.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        return server.find_model(model_id)

    app.post("/v1/chat/completions")(server.chat_completions)
    app.post("/v1/completions")(server.completions)
    app.post("/v1/embeddings")(server.embeddings)
    return app
