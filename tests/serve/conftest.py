"""One real lmforge server for the serve tests: uvicorn in a background thread on a free localhost port,
serving SmolLM2-135M-Instruct and the MiniLM embedder behind an API key."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import pytest

API_KEY = "test-key-123"


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    api_key: str
    app: object

    @property
    def engine(self):  # the Engine behind the AsyncEngine, for its stats
        return self.app.state.engine.engine

    @property
    def state(self):  # the OpenAIServer: active sequences, limits
        return self.app.state.server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(server, timeout: float = 15) -> dict:
    """Wait until the engine holds no request and the server counts no sequence; return the stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server.engine.stats
        if (stats["running"] == 0 and stats["waiting"] == 0 and server.state.active == 0) or (
            time.monotonic() > deadline
        ):
            return stats
        time.sleep(0.05)


@pytest.fixture(scope="session")
def server():
    import uvicorn

    import lmforge
    from lmforge.serve.app import create_app

    model = lmforge.load_model("smollm2-135m-instruct")
    embedder = lmforge.load_model("all-minilm-l6-v2")
    app = create_app(
        model,
        model_name="smollm2-135m-instruct",
        embedder=embedder,
        embedder_name="all-minilm-l6-v2",
        api_key=API_KEY,
        max_batch=8,
    )
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", API_KEY, app)
    uv.should_exit = True
    thread.join(timeout=10)
