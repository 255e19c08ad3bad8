"""Debian's Prometheus (installed by `make test`), scraping the given targets every second."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.server_process import free_port, terminate
from tests.support.waiting import wait_for

PROMETHEUS = Path("/usr/bin/prometheus")


class Prometheus:
    def __init__(self, jobs: dict[str, int], workdir: Path, bearer: str | None = None) -> None:
        """`jobs`: job name -> a loopback port serving /metrics."""
        if not PROMETHEUS.exists():
            raise RuntimeError("Debian's prometheus is missing: run `make test`, which installs it.")
        workdir.mkdir(parents=True, exist_ok=True)
        auth = f"    authorization:\n      credentials: {bearer}\n" if bearer else ""
        scrape = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n{auth}"
            for job, port in jobs.items()
        )
        config = workdir / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 30, message="prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def targets_up(self) -> dict[str, str]:
        active = httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    def query(self, expression: str) -> list[dict[str, Any]]:
        body = httpx.get(self.url + "/api/v1/query", params={"query": expression}, timeout=10).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expression: str) -> float:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
