"""`python -m lmforge.serve [MODEL] [--host] [--port] [--api-key] [--embedder] ...`."""

import argparse

from lmforge.serve.launch import add_serve_arguments, run_serve

parser = argparse.ArgumentParser(prog="python -m lmforge.serve", description="OpenAI-compatible server")
add_serve_arguments(parser)
try:
    run_serve(parser.parse_args())
except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
