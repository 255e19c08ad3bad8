"""The deployment files, checked by the real tools: docker-compose's parser and `nginx -t`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from nginx_process import check_config, render_config
from server_process import ROOT

COMPOSE = shutil.which("docker-compose")


def compose_config(*args: str) -> dict:
    if COMPOSE is None:
        pytest.fail("docker-compose (Debian package) is missing: run `make test`, which installs it.")
    done = subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_runs_the_scaled_out_topology_with_health_checks_and_volumes():
    config = compose_config("--profile", "production")
    services = config["services"]
    assert set(services) == {"redis", "postgres", "api", "worker", "nginx"}
    assert services["nginx"]["profiles"] == ["production"]
    assert all("profiles" not in s for name, s in services.items() if name != "nginx")
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


def test_nginx_conf_passes_nginx_t_and_never_buffers_streams(tmp_path):
    conf = render_config([18001, 18002], 18080, tmp_path)
    checked = check_config(conf)
    assert checked.returncode == 0, checked.stderr
    text = (ROOT / "nginx.conf").read_text()
    stream = text[text.index("location /api/stream/"):]
    stream = stream[:stream.index("}")]
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "gzip off;", "proxy_read_timeout 3600s;"):
        assert directive in stream, directive
