"""Fixtures for every folder: real uvicorn servers of this project (streams cannot be tested
through TestClient or ASGITransport, which buffer endless responses), and the markers that
follow the folders: tests/unit -> unit, tests/server -> server, tests/system -> system."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server_process import Server

# In-process imports of our modules (unit tests) must never pick up a developer's key or .env choice.
os.environ["LLM_PROVIDER"] = "scripted"
os.environ.pop("DASHSCOPE_API_KEY", None)
# This run's own Celery queue on the machine's shared Redis (servers and workers inherit it): a worker
# left behind by an earlier or concurrent run cannot take this run's phases, nor this run's workers theirs.
os.environ.setdefault("CELERY_QUEUE", f"test-phases-{uuid.uuid4().hex[:12]}")

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"unit", "server", "system", "compose"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.path)).relative_to(TESTS).parts[0]
        # A unit test's parameter that needs a real service is marked `system` where it is defined.
        if folder in FOLDER_MARKERS and not (folder == "unit" and item.get_closest_marker("system")):
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(app: str = "main:app", port: int | None = None, **env: Any) -> Server:
        """Start a server with these settings; pass data_dir=<path> to share a task history, and
        port=<an earlier server's port> to restart it where its viewers were connected."""
        folder = tmp_path_factory.mktemp("server")
        env.setdefault("data_dir", str(folder / "data"))
        # Tests poll and submit far faster than people do; the limits have tests of their own.
        env.setdefault("rate_limit", "100000/minute")
        env.setdefault("rate_limit_run_task", "100000/minute")
        server = Server({k.upper(): str(v) for k, v in env.items()}, folder / "server.log", app=app, port=port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., Server]) -> Server:
    """The default server: scripted provider, zero token delay."""
    return start_server()


@pytest.fixture(scope="session")
def slow_server(start_server: Callable[..., Server]) -> Server:
    """Scripted tokens every 5 ms, so a run lasts a few seconds and can be observed mid-flight."""
    return start_server(scripted_token_delay_ms=5, sse_heartbeat_s=0.5)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
