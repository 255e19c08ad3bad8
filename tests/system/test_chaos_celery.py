"""Chaos with Celery: two workers, one API process, real Redis and PostgreSQL. A random worker
is killed (`kill -9`) at random moments, over and over, and replaced, while tasks run, wait for
confirmation and are revised. The other processes take each lost phase over when its lease runs
out; every task ends `end` with four deliverables and a gap-free log, and no agent's work is
done twice except the one interrupted.

The seed is printed so a failing run can be replayed with CHAOS_SEED=<seed>."""

from __future__ import annotations

import os
import random
import time

import redis

from delivery.tasks.store import TaskStore
from tests.support.celery_worker import Worker
from tests.support.chaos import answer_confirmations, finished_logs, resumes, submit_all
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server

KILLS = 5
REDIS_DB = 5  # a database of its own: no other test's broker messages or streams


def test_tasks_finish_through_random_kills_of_celery_workers(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 10**6))
    print(f"CHAOS_SEED={seed}")
    rng = random.Random(seed)
    redis_url = ensure_redis().rsplit("/", 1)[0] + f"/{REDIS_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "SCRIPTED_TOKEN_DELAY_MS": "5",
            "TASK_LEASE_S": "3",
            "MAX_PHASE_ATTEMPTS": "10",
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }
        api = Server({**env, "INSTANCE_ID": "api", "DATA_DIR": str(tmp_path / "api")}, tmp_path / "api.log")
        workers = [Worker(env, tmp_path / f"worker-{i}.log", pool=["-P", "threads", "-c", "2"]) for i in range(2)]
        started = len(workers)
        try:
            for worker in workers:
                worker.wait_ready()
            tasks = submit_all(api.url)
            for _ in range(KILLS):
                answer_confirmations(api, tasks, until=time.monotonic() + rng.uniform(0.5, 4.0))
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                workers[victim] = Worker(env, tmp_path / f"worker-{started}.log", pool=["-P", "threads", "-c", "2"])
                started += 1
            answer_confirmations(api, tasks, until=time.monotonic() + 240, stop_when_done=True)

            logs = finished_logs(api.url, tasks, seed)
            store = TaskStore(database_url)  # the archive replays will read once Redis expires
            for task_id, events in logs.items():
                stored = [(e.sequence, e.event_type, e.content) for e in store.load_events(task_id)]
                assert stored == [(e["sequence"], e["event_type"], e["content"]) for e in events], seed
            store.close()
            assert resumes(logs) >= 1, f"no kill hit a running phase (seed {seed}): the test proved nothing"
        finally:
            for worker in workers:
                worker.stop()
            api.stop()
