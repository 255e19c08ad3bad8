"""`celery -A worker worker`, started as an operator starts it: from the project directory, with no
PYTHONPATH (the project is installed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server_process import ROOT, terminate


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DASHSCOPE_API_KEY", "PYTHONPATH")} | {
        "LLM_PROVIDER": "scripted"
    }


class Worker:
    """Threads by default (one process, so `kill -9` kills every phase it runs)."""

    def __init__(self, env: dict[str, str], log_path: Path, pool: list[str] | None = None) -> None:
        self.log_path = log_path
        self.env = env
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        pool = ["-P", "threads", "-c", "1"] if pool is None else pool
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "celery"),
                "-A",
                "worker",
                "worker",
                *pool,
                "--loglevel",
                "WARNING",
                "-n",
                f"test-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env={**base_env(), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until its runtime is up (it logs "worker … ready"): phases sent now start at once."""
        deadline = time.monotonic() + timeout
        while " ready (" not in self.log_text():
            assert self.proc.poll() is None, f"the worker exited: {self.log_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the worker did not start: {self.log_text()[-2000:]}"
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, timeout=15)
        self._log.close()
