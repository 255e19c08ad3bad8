"""Fixtures that start and stop real uvicorn servers (streams cannot be tested through
TestClient or ASGITransport, which buffer endless responses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# In-process imports of our modules (unit tests) must never pick up a developer's .env key.
os.environ["LLM_PROVIDER"] = "scripted"
os.environ.pop("DASHSCOPE_API_KEY", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("DASHSCOPE_API_KEY",)}
        full_env.update({"LLM_PROVIDER": "scripted", "PORT": str(self.port), "HOST": "127.0.0.1"})
        full_env.update(env)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash or an OOM kill)."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(**env: str) -> Server:
        """Start a server; pass data_dir=<path> to share (or reuse) a task history."""
        folder = tmp_path_factory.mktemp("server")
        env.setdefault("data_dir", str(folder / "data"))
        server = Server({k.upper(): str(v) for k, v in env.items()}, folder / "server.log")
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
