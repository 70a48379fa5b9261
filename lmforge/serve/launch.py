"""`lmforge serve`: load the model(s), build the app, run it under uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def served_name(name_or_path: str) -> str:
    """The name the API reports: a packaged model's canonical name, else the file or folder name."""
    from lmforge.registry import packaged_model

    packaged = packaged_model(name_or_path)
    if packaged is not None:
        return packaged.name
    return Path(name_or_path).stem or str(name_or_path)


def serve(
    model: str = "smollm2-135m-instruct",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    embedder: str | None = None,
    quantize: str | None = None,
    max_batch: int = 16,
    max_concurrent: int = 64,
    max_body_bytes: int = 1_000_000,
    log_level: str = "info",
) -> None:
    """Load `model` (and `embedder`), print the URL, and serve until interrupted."""
    import uvicorn

    from lmforge.model import load_model
    from lmforge.serve.app import create_app

    chat = load_model(model, quantize=quantize)  # int8/int4: bfloat16 activations, faster CPU decoding
    if getattr(chat, "tokenizer", None) is None or not hasattr(chat, "embed"):
        raise ValueError(f"'{model}' is not a chat/text model with a tokenizer (it cannot generate)")
    emb = load_model(embedder) if embedder else None
    if emb is not None and not hasattr(emb, "encode"):
        raise ValueError(f"'{embedder}' is not an embedding model (it has no encode(texts))")
    name = served_name(model)
    emb_name = served_name(embedder) if embedder else None
    app = create_app(
        chat,
        model_name=name,
        embedder=emb,
        embedder_name=emb_name,
        api_key=api_key,
        max_batch=max_batch,
        max_concurrent=max_concurrent,
        max_body_bytes=max_body_bytes,
    )
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"lmforge: serving {name}" + (f" and {emb_name}" if emb_name else ""))
    print(f"  chat page:  http://{shown}:{port}/")
    print(f"  OpenAI API: http://{shown}:{port}/v1  (e.g. OpenAI(base_url=..., api_key=...))")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m-instruct",
        help="chat model: a name, .gguf file or folder (default: smollm2-135m-instruct)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LMFORGE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1/ (default: $LMFORGE_API_KEY)",
    )
    parser.add_argument(
        "--embedder", help="also serve /v1/embeddings with this model (e.g. all-minilm-l6-v2)"
    )
    parser.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantization of the model")
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=64,
        help="sequences in flight (running + queued); beyond it: 503",
    )


def run_serve(args: argparse.Namespace) -> None:
    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        embedder=args.embedder,
        quantize=args.quantize,
        max_batch=args.max_batch,
        max_concurrent=args.max_concurrent,
    )
