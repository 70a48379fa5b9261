"""Serving: an OpenAI-compatible HTTP API and a web chat page over the continuous-batching engine."""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `import lmforge.serve` must not pull in FastAPI and torch until a server is asked for.
    if name == "create_app":
        from lmforge.serve.app import create_app

        return create_app
    if name in ("serve", "add_serve_arguments", "run_serve"):
        from lmforge.serve import launch

        return getattr(launch, name)
    raise AttributeError(f"module 'lmforge.serve' has no attribute {name!r}")


__all__ = ["create_app", "serve", "add_serve_arguments", "run_serve"]
