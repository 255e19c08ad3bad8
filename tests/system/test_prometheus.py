"""A real Prometheus scrapes an API process and a Celery worker (with API keys on, by bearer
token), and the figures of a run are read back through Prometheus's HTTP API."""

from __future__ import annotations

import httpx

from tests.support.api import AGENTS, wait_finished
from tests.support.celery_worker import Worker
from tests.support.prometheus_process import Prometheus
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server, free_port
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for

KEY = "prometheus-scrape-key"


def test_prometheus_scrapes_the_api_and_a_worker_and_sees_the_run(tmp_path):
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        worker_port = free_port()
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "API_KEYS": KEY,
            "RATE_LIMIT": "100000/minute",
            "METRICS_PORT": str(worker_port),
        }
        api = Server({**env, "DATA_DIR": str(tmp_path / "api"), "INSTANCE_ID": "api-1"}, tmp_path / "api.log")
        worker = Worker(env, tmp_path / "worker.log")
        prometheus = None
        try:
            # The worker serves its metrics as soon as it starts, before any task.
            wait_for(
                lambda: _answers(f"http://127.0.0.1:{worker_port}/metrics"), 60, message="the worker's metrics endpoint"
            )
            assert httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).status_code == 401
            prometheus = Prometheus({"api": api.port, "worker": worker_port}, tmp_path / "prometheus", bearer=KEY)
            wait_for(
                lambda: prometheus.targets_up() == {"api": "up", "worker": "up"},
                30,
                message=lambda: f"both targets up: {prometheus.targets_up()}",
            )

            with httpx.Client(base_url=api.url, timeout=30, headers={"X-API-Key": KEY}) as c:
                r = c.post(
                    "/api/run_task",
                    json={"user_requirement": "Build a plant watering planner", "skip_confirmation": True},
                )
                task_id = r.json()["task_id"]
                status = wait_finished(c, task_id, timeout=120)
                events = read_stream(api.url, task_id, headers={"X-API-Key": KEY}).events
            assert status["status"] == "succeeded"

            total = status["usage"]["total"]
            wait_for(
                lambda: prometheus.scalar('sum(delivery_llm_tokens_total{job="worker"})') == total["total_tokens"],
                30,
                message="the worker's token counts in Prometheus",
            )
            # The worker counts the task finished after its last tokens: a scrape can fall between.
            wait_for(
                lambda: prometheus.scalar('delivery_tasks_finished_total{job="worker",status="succeeded"}') == 1,
                30,
                message="the worker's finished task in Prometheus",
            )
            assert prometheus.scalar('delivery_tasks_started_total{job="worker"}') == 1
            assert prometheus.scalar('sum(delivery_events_published_total{job="worker"})') == len(events)
            agents = {s["metric"]["agent"] for s in prometheus.query('delivery_llm_tokens_total{job="worker"}')}
            assert agents == set(AGENTS)
            # The API process answered the requests and streamed the events.
            wait_for(
                lambda: (
                    prometheus.scalar('delivery_http_requests_total{job="api",route="/api/run_task",status="202"}') == 1
                ),
                30,
                message="the API's request count",
            )
            wait_for(
                lambda: prometheus.scalar('delivery_events_sent_total{job="api"}') == len(events),
                30,
                message="the API's sent events",
            )
        finally:
            if prometheus is not None:
                prometheus.stop()
            worker.stop()
            api.stop()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False
