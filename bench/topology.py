"""The scaled-out deployment as docker-compose runs it, on loopback: N API replicas behind the
project's nginx.conf, M Celery workers (`-P threads`), Redis and PostgreSQL (bench/scale_out.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from bench.probe import PidSource, fixed, pids_named
from tests.support.celery_worker import Worker
from tests.support.nginx_process import Nginx
from tests.support.real_services import PG_HOST, PG_PORT, PG_USER
from tests.support.server_process import Server, free_port, terminate


class PrivateRedis:
    """A redis-server of the bench's own on a free port, so its command counts, bytes and CPU are
    this deployment's alone (the machine's Redis on 6379 serves tests running beside the bench).
    Append-only file on, as docker-compose.yml runs Redis."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "yes", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        terminate(self.proc)


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


def postgres_backends(database_url: str) -> PidSource:
    """The PostgreSQL server processes serving this database's connections (the pools keep them
    open, so a window sees the same ones at both ends). The cluster's shared processes (WAL
    writer, checkpointer) and other databases' backends are left out."""
    name = database_name(database_url)

    def find() -> list[int]:
        with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres") as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)).fetchall()
        return [pid for (pid,) in rows]

    return find


def with_children(pid: int) -> PidSource:
    """A process and its direct children (Nginx's master and its worker processes)."""

    def find() -> list[int]:
        found = [pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
        return found

    return find


@dataclass
class Deployment:
    servers: list[Server]
    workers: list[Worker]
    nginx: Nginx
    redis_url: str
    database_url: str
    redis: PrivateRedis | None = None
    parts: list = field(default_factory=list)
    idle_cpu_pct: dict[str, float] = field(default_factory=dict)  # CpuSampler's result with no load

    def cpu_groups(self) -> dict[str, PidSource]:
        """For bench.probe.CpuSampler: each replica, the workers, Redis, this database's
        PostgreSQL backends and Nginx (the sampler adds the client and the machine)."""
        groups: dict[str, PidSource] = {f"api_{n}": fixed(s.proc.pid) for n, s in enumerate(self.servers, 1)}
        groups["workers"] = fixed(*(w.proc.pid for w in self.workers))
        groups["redis"] = fixed(self.redis.proc.pid) if self.redis else pids_named("redis-server")
        groups["postgres"] = postgres_backends(self.database_url)
        groups["nginx"] = with_children(self.nginx.proc.pid)
        return groups


@contextmanager
def deployment(
    folder: Path, replicas: int, workers: int, threads: int, private_redis: bool = True, **settings: str
) -> Iterator[Deployment]:
    """`replicas` API processes, `workers` Celery workers of `threads` threads each, Nginx in front,
    a fresh PostgreSQL database and Redis (a private redis-server, or the machine's on 6379), crews
    scripted at a cloud model's pace (100 tokens/s per agent) unless `settings` say otherwise."""
    from tests.support.real_services import ensure_redis, fresh_postgres_database

    folder.mkdir(parents=True, exist_ok=True)
    private = PrivateRedis(folder / "redis") if private_redis else None
    try:
        with fresh_postgres_database() as database_url:
            redis_url = private.url if private else ensure_redis()
            env = {
                "EVENT_BACKEND": "redis",
                "REDIS_URL": redis_url,
                "DATABASE_URL": database_url,
                "EXECUTOR": "celery",
                # its own broker queue: workers of tests running beside the bench take none of its phases
                "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
                "LLM_PROVIDER": "scripted",
                "SCRIPTED_TOKEN_DELAY_MS": "10",  # a cloud model's pace: 100 tokens/s per agent
                "LOG_LEVEL": "warning",
                "RATE_LIMIT": "10000000/minute",  # a load test is not abuse
                "RATE_LIMIT_RUN_TASK": "10000000/minute",
                **{k.upper(): str(v) for k, v in settings.items()},
            }
            parts: list[Server | Worker | Nginx] = []
            try:
                # The first replica creates the schema alone (processes creating it at once on a
                # fresh database can collide); the workers then start (imports, ~5 s) while the
                # other replicas do.
                servers: list[Server] = []
                started: list[Worker] = []

                def start_replica(n: int) -> None:
                    server = Server(
                        {**env, "INSTANCE_ID": f"api-{n}", "DATA_DIR": str(folder / f"api-{n}")},
                        folder / f"api-{n}.log",
                    )
                    servers.append(server)
                    parts.append(server)

                start_replica(0)
                for n in range(workers):
                    # (its default log level: wait_ready() looks for its "ready" line)
                    worker_env = {
                        **env,
                        "INSTANCE_ID": f"worker-{n}",
                        "DATA_DIR": str(folder / f"w{n}"),
                        "LOG_LEVEL": "info",
                    }
                    worker = Worker(worker_env, folder / f"w{n}.log", pool=["-P", "threads", "-c", str(threads)])
                    started.append(worker)
                    parts.append(worker)
                for n in range(1, replicas):
                    start_replica(n)
                for worker in started:
                    worker.wait_ready()
                nginx = Nginx([s.port for s in servers], folder / "nginx")
                parts.append(nginx)
                yield Deployment(servers, started, nginx, redis_url, database_url, private, parts)
            finally:
                for part in reversed(parts):
                    part.stop()
    finally:
        if private:
            private.stop()
