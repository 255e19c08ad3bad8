"""The deployment files, checked by the real tools: docker-compose's parser and `nginx -t`."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.support.nginx_process import Nginx, check_config, render_config
from tests.support.server_process import ROOT, free_port
from tests.support.waiting import wait_for

COMPOSE = shutil.which("docker-compose")


def compose_config(*args: str) -> dict:
    if COMPOSE is None:
        pytest.fail("docker-compose (Debian package) is missing: run `make test`, which installs it.")
    done = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_runs_the_scaled_out_topology_with_health_checks_and_volumes():
    config = compose_config("--profile", "production")
    services = config["services"]
    assert set(services) == {"redis", "postgres", "api", "worker", "nginx", "prometheus"}
    assert services["nginx"]["profiles"] == ["production"]
    assert services["prometheus"]["profiles"] == ["observability"]
    assert all("profiles" not in s for name, s in services.items() if name not in ("nginx", "prometheus"))
    for name, service in services.items():
        assert "healthcheck" in service, name
    api, worker = services["api"], services["worker"]
    assert api["environment"]["EVENT_BACKEND"] == "redis" and api["environment"]["EXECUTOR"] == "celery"
    assert api["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert worker["environment"] == api["environment"]  # the same settings everywhere
    assert worker["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert "container_name" not in api  # scalable: docker compose up --scale api=3
    assert {"redis-data", "postgres-data"} <= set(config["volumes"])
    assert f"{ROOT / 'nginx.conf'}:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    for dep in ("redis", "postgres"):
        assert api["depends_on"][dep]["condition"] == "service_healthy"
    # workers start once an API replica is ready: the database schema exists by then
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    # users get the official images; tests/compose chooses stand-ins through these variables
    assert {name: s["image"] for name, s in services.items()} == {
        "redis": "redis:7-alpine",
        "postgres": "postgres:15-alpine",
        "api": "multi-agent-delivery:latest",
        "worker": "multi-agent-delivery:latest",
        "nginx": "nginx:1.27-alpine",
        "prometheus": "prom/prometheus:v2.53.0",
    }
    for name in ("api", "worker"):
        assert services[name]["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim", "LOCAL_MODEL": "true"}, name
        # a graceful stop has time to hand running tasks back
        assert services[name]["stop_grace_period"] == "30s", name
    assert api["ports"] == [{"published": "8000-8009", "target": 8000}]
    assert services["nginx"]["ports"] == [{"published": 80, "target": 80}]
    # health: readiness of each API replica and worker, and through Nginx to a replica
    assert "http://127.0.0.1:8000/readyz" in " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:9100/readyz" in " ".join(worker["healthcheck"]["test"])
    assert "http://127.0.0.1/readyz" in services["nginx"]["healthcheck"]["test"]
    # Nginx re-resolves the replicas through the container's DNS server (nginx.conf includes it)
    assert "/etc/nginx/resolver.conf" in services["nginx"]["command"][-1]
    assert "include /etc/nginx/resolver.conf;" in (ROOT / "nginx.conf").read_text()


def test_the_dockerfile_builds_llama_cpp_with_the_makefiles_version_and_flags():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    version = re.search(r"^LLAMA_CPP_VERSION := (\S+)$", makefile, re.M)
    flags = re.search(r"^LLAMA_CMAKE_ARGS  := (.+)$", makefile, re.M)
    assert version and flags
    assert f"ARG LLAMA_CPP_VERSION={version.group(1)}\n" in dockerfile
    assert f'ARG LLAMA_CMAKE_ARGS="{" ".join(flags.group(1).split())}"\n' in dockerfile
    assert f"llama-cpp-python=={version.group(1)}\n" in (ROOT / "requirements-local-model.txt").read_text()
    # requirements.txt is both halves; an image for remote models installs the core only
    assert (ROOT / "requirements.txt").read_text().splitlines()[-2:] == [
        "-r requirements-core.txt",
        "-r requirements-local-model.txt",
    ]
    assert "llama" not in (ROOT / "requirements-core.txt").read_text()


def test_the_observability_profile_adds_a_prometheus_whose_config_promtool_accepts():
    services = compose_config("--profile", "observability")["services"]
    assert services["prometheus"]["profiles"] == ["observability"]
    assert f"{ROOT / 'deploy/prometheus.yml'}:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert services["worker"]["environment"]["METRICS_PORT"] == "9100"
    checked = subprocess.run(
        ["/usr/bin/promtool", "check", "config", str(ROOT / "deploy/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "job_name: worker" in (ROOT / "deploy/prometheus.yml").read_text()


def test_nginx_conf_passes_nginx_t_and_never_buffers_streams(tmp_path):
    conf = render_config([18001, 18002], 18080, tmp_path)
    checked = check_config(conf)
    assert checked.returncode == 0, checked.stderr
    text = (ROOT / "nginx.conf").read_text()
    stream = text[text.index("location /api/stream/") :]
    stream = stream[: stream.index("}")]
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "gzip off;",
        "proxy_read_timeout 3600s;",
    ):
        assert directive in stream, directive


class IdleUpstream:
    """An SSE upstream that sends one event, stays silent for IDLE_S (no heartbeat), then ends.
    nginx's default proxy_read_timeout (60 s) cuts such a stream; nginx.conf must not."""

    IDLE_S = 64.0

    def __init__(self) -> None:
        async def stream(request: Request) -> StreamingResponse:
            async def body() -> AsyncIterator[bytes]:
                yield b"id: 1\nevent: start\ndata: {}\n\n"
                await asyncio.sleep(self.IDLE_S)
                yield b"id: 2\nevent: end\ndata: {}\n\n"

            return StreamingResponse(body(), media_type="text/event-stream")

        async def health(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/api/stream/{task_id}", stream), Route("/healthz", health)])
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, 10, message="the upstream to start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def events_through(url: str) -> list[str]:
    ids: list[str] = []
    try:
        with httpx.Client(timeout=120) as client, client.stream("GET", url + "/api/stream/t") as r:
            ids.extend(line for line in r.iter_lines() if line.startswith("id:"))
    except httpx.RemoteProtocolError:  # nginx gave up on the upstream mid-response
        pass
    return ids


def test_nginx_conf_keeps_a_silent_stream_open_past_nginxs_default_read_timeout(tmp_path):
    """The same silent stream through nginx.conf and through a copy without its read timeout
    (the control, which nginx cuts after 60 s): the test fails if nginx.conf loses the setting."""
    upstream = IdleUpstream()
    original = (ROOT / "nginx.conf").read_text()
    assert original.count("proxy_read_timeout 3600s;") == 1
    proxies = {}
    try:
        proxies["nginx.conf"] = Nginx([upstream.port], tmp_path / "ours")
        proxies["control"] = Nginx(
            [upstream.port], tmp_path / "control", source=original.replace("proxy_read_timeout 3600s;", "")
        )
        with ThreadPoolExecutor(2) as pool:  # both wait out the same minute
            received = dict(zip(proxies, pool.map(events_through, [p.url for p in proxies.values()]), strict=True))
        assert received == {"nginx.conf": ["id: 1", "id: 2"], "control": ["id: 1"]}
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
