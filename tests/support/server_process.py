"""A real uvicorn server in a child process, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the project directory


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, app: str = "main:app", port: int | None = None) -> None:
        """Serve `app` (an import path; the project is installed, so `main:app` and
        `bench.core_app:app` resolve from the project directory) with these settings."""
        self.env = dict(env)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("DASHSCOPE_API_KEY", "PYTHONPATH")}
        full_env.update({"LLM_PROVIDER": "scripted", "PORT": str(self.port), "HOST": "127.0.0.1"})
        full_env.update(env)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in kill() or stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
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
        terminate(self.proc)
        if not self._log.closed:
            self._log.close()
