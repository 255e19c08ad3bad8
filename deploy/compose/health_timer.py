"""Runs every running container's health check on its interval, as systemd's timers do for podman.

podman 4.3 schedules health checks with systemd transient timers. Where systemd is not PID 1
(containers, CI sandboxes, this kind of machine) nothing runs them: every status stays `starting`,
and `depends_on: {condition: service_healthy}` waits forever. This loop does the timers' job through
podman's own API (GET /libpod/containers/{id}/healthcheck, what `podman healthcheck run` calls):
podman executes the check command from docker-compose.yml inside the container and keeps the status,
the failing streak (retries, start period) and the log, exactly as with systemd. Only the scheduling
is ours: the first check `interval` after the container started, then `interval` after each check
ended (Docker's rule).

    python3 health_timer.py /path/to/podman.sock      (deploy/compose/engine.sh starts it)
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from typing import Any

POLL_S = 0.5


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def call(sock: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    conn = UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", "/v4.0.0" + path)
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        conn.close()


class Timer:
    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.due: dict[str, float] = {}  # container id + start time -> when its next check is due
        self.interval: dict[str, float] = {}
        self.running: set[str] = set()
        self.lock = threading.Lock()

    def check(self, key: str, cid: str) -> None:
        try:  # podman applies the check's own timeout
            call(self.sock, f"/libpod/containers/{cid}/healthcheck", timeout=120)
        except (OSError, ValueError, http.client.HTTPException):
            pass  # the container stopped meanwhile, or the service is going away
        finally:
            with self.lock:
                self.running.discard(key)
                if key in self.due:
                    self.due[key] = time.monotonic() + self.interval[key]

    def tick(self) -> None:
        status, containers = call(self.sock, "/libpod/containers/json")
        if status != 200:
            return
        now = time.monotonic()
        alive = set()
        for c in containers:
            key = f"{c['Id']}@{c.get('StartedAt')}"
            alive.add(key)
            if key not in self.interval:
                status, info = call(self.sock, f"/libpod/containers/{c['Id']}/json")
                health = ((info or {}).get("Config") or {}).get("Healthcheck") if status == 200 else None
                if not health or not health.get("Test") or health["Test"][0] == "NONE":
                    self.interval[key] = 0.0
                    continue
                self.interval[key] = (health.get("Interval") or 30e9) / 1e9
                self.due[key] = now + self.interval[key]
            if not self.interval[key]:
                continue
            with self.lock:
                if key in self.running or now < self.due[key]:
                    continue
                self.running.add(key)
            threading.Thread(target=self.check, args=(key, c["Id"]), daemon=True).start()
        with self.lock:
            for key in set(self.interval) - alive:
                self.interval.pop(key, None)
                self.due.pop(key, None)


def main() -> None:
    timer = Timer(sys.argv[1])
    while True:
        try:
            timer.tick()
        except (OSError, ValueError, http.client.HTTPException):
            pass  # the service restarts or is not up yet
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
