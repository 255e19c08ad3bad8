"""A task's trace across processes, sent by the SDK's OTLP/HTTP exporter to a real receiver: the
API process opens it, the Celery worker's phases continue it."""

from __future__ import annotations

import httpx

from tests.support.api import wait_finished
from tests.support.celery_worker import Worker
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


def test_the_trace_begun_by_the_api_is_continued_by_the_worker(tmp_path):
    redis_url = ensure_redis()
    receiver = OtlpReceiver()
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            # wait_finished polls every 20 ms: on a busy machine a run outlasts the default limit
            "RATE_LIMIT": "100000/minute",
        }
        api = Server({**env, "DATA_DIR": str(tmp_path / "api")}, tmp_path / "api.log")
        worker = Worker(env, tmp_path / "worker.log")
        try:
            with httpx.Client(base_url=api.url, timeout=30) as c:
                task_id = c.post(
                    "/api/run_task", json={"user_requirement": "Build a podcast index", "skip_confirmation": True}
                ).json()["task_id"]
                status = wait_finished(c, task_id, timeout=120)
            events = read_stream(api.url, task_id).events
            trace_id = status["trace_id"]
            assert trace_id and len(trace_id) == 32 and events[0]["metadata"]["trace_id"] == trace_id

            def complete() -> list[dict] | None:
                # The phase span ends after its model calls: it may reach the receiver in a later batch.
                spans = receiver.trace(trace_id)
                names = [s["name"] for s in spans]
                calls = sum(name.startswith("llm ") for name in names)
                return spans if calls == 4 and "phase analysis" in names else None

            spans = wait_for(complete, 30, message="the worker's spans at the receiver")
            (root,) = [s for s in spans if s["parent"] is None]
            assert root["name"] == "task submitted" and root["service"] == "multi-agent-delivery-api"
            (phase,) = [s for s in spans if s["name"] == "phase analysis"]
            assert phase["service"] == "multi-agent-delivery-worker" and phase["parent"] == root["span_id"]
            tokens = sum(s["attributes"]["llm.token_count.total"] for s in spans if s["name"].startswith("llm "))
            assert tokens == status["usage"]["total"]["total_tokens"]
            assert {s["service"] for s in spans if s["name"].startswith("llm ")} == {"multi-agent-delivery-worker"}
        finally:
            worker.stop()
            api.stop()
            receiver.stop()
