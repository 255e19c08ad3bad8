"""Fixtures that start and stop real uvicorn servers (streams cannot be tested through
TestClient or ASGITransport, which buffer endless responses)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_process import Server, free_port  # noqa: E402,F401  (free_port is used by tests)

# In-process imports of our modules (unit tests) must never pick up a developer's .env key.
os.environ["LLM_PROVIDER"] = "scripted"
os.environ.pop("DASHSCOPE_API_KEY", None)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(app: str = "main:app", app_dir: Path = ROOT, **env: str) -> Server:
        """Start a server; pass data_dir=<path> to share (or reuse) a task history."""
        folder = tmp_path_factory.mktemp("server")
        env.setdefault("data_dir", str(folder / "data"))
        # Tests poll and submit far faster than people do; the limits have tests of their own.
        env.setdefault("rate_limit", "100000/minute")
        env.setdefault("rate_limit_run_task", "100000/minute")
        server = Server({k.upper(): str(v) for k, v in env.items()}, folder / "server.log", app=app,
                        app_dir=app_dir)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The default server: scripted provider, zero token delay."""
    return start_server()


@pytest.fixture(scope="session")
def slow_server(start_server) -> Server:
    """Scripted tokens every 5 ms, so a run lasts a few seconds and can be observed mid-flight."""
    return start_server(scripted_token_delay_ms=5, sse_heartbeat_s=0.5)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
