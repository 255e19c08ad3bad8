"""The project's nginx.conf, run for real on loopback in front of test servers."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.server_process import ROOT, free_port, terminate

NGINX = "/usr/sbin/nginx"


def render_config(upstream_ports: list[int], listen_port: int, workdir: Path, source: str | None = None) -> Path:
    """nginx.conf with its upstream pointed at loopback ports and its files kept in workdir: the
    compose DNS name (`set $api_upstream api:8000;`, found through the resolver that
    docker-compose.yml writes into resolver.conf) becomes an upstream group of these ports.
    `source`: a variant of nginx.conf's text to render instead (the tracked file is never written)."""
    text = (ROOT / "nginx.conf").read_text() if source is None else source
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstream_ports)
    upstream = f"    upstream loopback_api {{\n{servers}        keepalive 64;\n    }}\n"
    text, n = re.subn(r"    include /etc/nginx/resolver.conf;\n", upstream, text)
    assert n == 1, "nginx.conf must `include /etc/nginx/resolver.conf;`"
    text, n = re.subn(r"set \$api_upstream api:8000;", "set $api_upstream loopback_api;", text)
    assert n == 1, "nginx.conf must name its upstream `set $api_upstream api:8000;`"
    text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text)
    assert n == 1, "nginx.conf must `listen 80;`"
    temp = "".join(
        f"    {kind}_temp_path {workdir}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", f"http {{\n{temp}    access_log off;\n", 1)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)
    conf = workdir / "nginx.conf"
    conf.write_text(f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n" + text)
    return conf


def check_config(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True, check=False)


class Nginx:
    def __init__(self, upstream_ports: list[int], workdir: Path, source: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = render_config(upstream_ports, self.port, workdir, source)
        checked = check_config(self.conf)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        terminate(self.proc)
