"""docker-compose.yml run for real: Docker Compose v2 and the docker CLI against podman's
Docker-compatible socket (deploy/compose/engine.sh sets both up), one compose project per use."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.server_process import ROOT, free_port

ENGINE = ROOT / "deploy" / "compose" / "engine.sh"
ARTIFACTS = ROOT / "tests" / "artifacts" / "compose"  # each run's commands and container logs
# our image, rebuilt by each run from the layers cached by the last
APP_IMAGE = "localhost/multi-agent-delivery-compose-test:latest"


def engine_up(timeout: float = 900) -> dict[str, str]:
    """Install and start the engine, build the stand-in images; the environment for compose."""
    done = subprocess.run([str(ENGINE), "up"], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{ENGINE} up failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def engine_down() -> None:
    subprocess.run([str(ENGINE), "down"], capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Container:
    id: str
    name: str
    service: str
    info: dict[str, Any] = field(repr=False)

    @property
    def running(self) -> bool:
        return bool(self.info["State"]["Running"])

    @property
    def health(self) -> str:
        return str((self.info["State"].get("Health") or {}).get("Status") or "none")

    @property
    def hostname(self) -> str:
        return str(self.info["Config"]["Hostname"])

    def port(self, container_port: int) -> int | None:
        bindings = (self.info["NetworkSettings"].get("Ports") or {}).get(f"{container_port}/tcp") or []
        return int(bindings[0]["HostPort"]) if bindings else None


class Stack:
    """One compose project of docker-compose.yml: every profile, stand-in images, loopback ports."""

    def __init__(self, engine_env: dict[str, str], settings: dict[str, str]) -> None:
        self.project = f"madtest{uuid.uuid4().hex[:8]}"
        self.workdir = ARTIFACTS / self.project
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nginx_port = free_port()
        self.prometheus_port = free_port()
        self.nginx_url = f"http://127.0.0.1:{self.nginx_port}"
        self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        variables = {
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_PROFILES": "production,observability",
            "APP_IMAGE": APP_IMAGE,
            # loopback only; each API replica gets a free port of its own (asked from the engine)
            "API_PORTS": "127.0.0.1:",
            "NGINX_PORT": f"127.0.0.1:{self.nginx_port}",
            "PROMETHEUS_PORT": f"127.0.0.1:{self.prometheus_port}",
            **{
                k: engine_env[k]
                for k in ("BASE_IMAGE", "REDIS_IMAGE", "POSTGRES_IMAGE", "NGINX_IMAGE", "PROMETHEUS_IMAGE")
            },
            **settings,
        }
        # compose reads only this file, not the project's .env (a developer's keys stay out)
        self.env_file = self.workdir / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            **{k: engine_env[k] for k in ("CONTAINERS_CONF", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_BUILDKIT")},
            **variables,
        }
        self.log = self.workdir / "commands.log"

    # -- commands --------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = subprocess.run(
            list(args), capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=timeout, check=False
        )
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(args)}  ({time.monotonic() - started:.1f}s, exit {done.returncode})\n")
            log.write(done.stdout[-3000:] + done.stderr[-3000:] + "\n")
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
            )
        return done

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(
            "docker",
            "compose",
            "--env-file",
            str(self.env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
            *args,
            timeout=timeout,
            check=check,
        )

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("docker", *args, timeout=timeout, check=check)

    # -- state -----------------------------------------------------------------------------------

    def containers(self, service: str | None = None, all: bool = False) -> list[Container]:
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = self.docker("ps", "-q", *(["-a"] if all else []), *filters).stdout.split()
        if not ids:
            return []
        found = []
        for info in json.loads(self.docker("inspect", *ids).stdout):
            labels = info["Config"]["Labels"]
            found.append(Container(info["Id"], info["Name"].lstrip("/"), labels["com.docker.compose.service"], info))
        return sorted(found, key=lambda c: c.name)

    def container(self, name_or_id: str) -> Container:
        info = json.loads(self.docker("inspect", name_or_id).stdout)[0]
        labels = info["Config"]["Labels"]
        return Container(info["Id"], info["Name"].lstrip("/"), labels["com.docker.compose.service"], info)

    def api_urls(self) -> list[str]:
        """Each API replica's own published address."""
        ports = [c.port(8000) for c in self.containers("api")]
        assert all(ports), "an API replica has no published port"
        return [f"http://127.0.0.1:{p}" for p in ports]

    def wait_healthy(self, expected: dict[str, int], timeout: float = 240) -> list[Container]:
        """Until every expected service has that many running containers, all `healthy`."""
        deadline = time.monotonic() + timeout
        while True:
            containers = self.containers()
            counts = {
                s: sum(1 for c in containers if c.service == s and c.running and c.health == "healthy")
                for s in expected
            }
            if counts == expected:
                return containers
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not every container became healthy in {timeout:g}s: want {expected}, have {counts}\n"
                    + self.describe(containers)
                )
            time.sleep(1)

    def wait_container_healthy(self, cid: str, timeout: float = 120) -> Container:
        deadline = time.monotonic() + timeout
        while True:
            container = self.container(cid)
            if container.running and container.health == "healthy":
                return container
            if time.monotonic() > deadline:
                raise AssertionError(f"{container.name} not healthy in {timeout:g}s\n" + self.describe([container]))
            time.sleep(0.5)

    def describe(self, containers: list[Container]) -> str:
        """Each container's state, its last health-check output and its log's tail."""
        lines = []
        for c in containers:
            health = c.info["State"].get("Health") or {}
            last = (health.get("Log") or [{}])[-1]
            lines.append(
                f"--- {c.name}: running={c.running} health={c.health} "
                f"last check: exit {last.get('ExitCode')} {str(last.get('Output', ''))[-300:]!r}"
            )
            logs = self.docker("logs", "--tail", "15", c.id, check=False)
            lines.append((logs.stdout + logs.stderr)[-1500:])
        return "\n".join(lines)

    def save_logs(self) -> None:
        """Every container's log into the work folder (kept by pytest for a failed run)."""
        for c in self.containers(all=True):
            logs = self.docker("logs", c.id, check=False, timeout=60)
            (self.workdir / f"{c.name}.log").write_text(logs.stdout + logs.stderr)


def get_json(url: str, timeout: float = 10) -> tuple[int, Any]:
    response = httpx.get(url, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text
