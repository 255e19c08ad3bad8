"""Credentials written into the URLs an operator configures never show: not in /healthz or
/readyz (open by design), the event stream, the API's answers, the logs of the API process and of
a Celery worker, nor the spans they export. Every URL setting carries one here, and the run makes
each part that quotes a URL speak: the model server refuses the JSON form (the crew logs where
the model lives), the webhook receiver fails (the sender logs what it gave up)."""

from __future__ import annotations

import base64
import json
import os
import uuid

import httpx

from tests.support.api import wait_finished
from tests.support.celery_worker import Worker
from tests.support.fake_openai import FakeOpenAI
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.real_services import PG_USER, ensure_redis, fresh_postgres_database
from tests.support.server_process import Server, free_port
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import WebhookReceiver


def secret(name: str) -> str:
    return f"pw-{name}-{uuid.uuid4().hex[:10]}"


def test_credentials_in_every_url_setting_never_show(tmp_path):
    secrets = {name: secret(name) for name in ("openai", "redis", "broker", "database", "webhook", "otel")}
    redis_host = ensure_redis().removeprefix("redis://")  # 127.0.0.1:6379/0; its default user takes any password
    model = FakeOpenAI(forms="refuse")
    spans = OtlpReceiver()
    signing = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = WebhookReceiver(signing)
    receiver.answers = [500] * 10  # so the sender gives the notifications up, and says so in its log
    with fresh_postgres_database() as database_url:
        env = {
            "LLM_PROVIDER": "openai",
            "LLM_MODEL": "m",
            "LLM_MAX_RETRIES": "0",
            "OPENAI_BASE_URL": model.url.replace("http://", f"http://alice:{secrets['openai']}@"),
            "EVENT_BACKEND": "redis",
            "REDIS_URL": f"redis://default:{secrets['redis']}@{redis_host}",
            "EXECUTOR": "celery",
            "CELERY_BROKER_URL": f"redis://default:{secrets['broker']}@{redis_host}",
            # PostgreSQL trusts local connections: the password is sent, not needed.
            "DATABASE_URL": database_url.replace(f"//{PG_USER}@", f"//{PG_USER}:{secrets['database']}@"),
            "WEBHOOK_URLS": f"{receiver.url}?token={secrets['webhook']}",
            "WEBHOOK_SECRET": signing,
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "WEBHOOK_MAX_ATTEMPTS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": spans.url.replace("http://", f"http://otel:{secrets['otel']}@"),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LOG_LEVEL": "info",
            "RATE_LIMIT": "100000/minute",
        }
        worker_port = free_port()
        api = Server({**env, "DATA_DIR": str(tmp_path / "api")}, tmp_path / "api.log")
        worker = Worker({**env, "METRICS_PORT": str(worker_port)}, tmp_path / "worker.log")
        try:
            worker.wait_ready()
            shown: dict[str, str] = {}
            with httpx.Client(base_url=api.url, timeout=30) as c:
                task_id = c.post(
                    "/api/run_task", json={"user_requirement": "Build a seed catalogue", "skip_confirmation": True}
                ).json()["task_id"]
                status = wait_finished(c, task_id, timeout=120)
                shown["event stream"] = c.get(f"/api/stream/{task_id}").text
                shown["status"] = c.get(f"/api/task/{task_id}/status").text
                wait_for(lambda: "given up" in api.log_text(), 30, message="the webhook sender to give up")
                shown["webhooks"] = c.get(f"/api/task/{task_id}/webhooks").text
                shown["healthz"] = c.get("/healthz").text
                shown["readyz"] = c.get("/readyz").text
            shown["worker readyz"] = httpx.get(f"http://127.0.0.1:{worker_port}/readyz", timeout=10).text

            def exported() -> list | None:
                # the phase span ends last, after the model calls: wait for it
                trace = spans.trace(status["trace_id"])
                return trace if any(s["name"] == "phase analysis" for s in trace) else None

            shown["spans"] = json.dumps(wait_for(exported, 30, message="the task's spans"))
        finally:
            worker.stop()
            api.stop()
    shown["API log"], shown["worker log"] = api.log_text(), worker.log_text()
    spans.stop()

    # The run made the parts that quote a URL speak (else this test would prove nothing) ...
    assert "refused a JSON-schema response format" in shown["worker log"]
    assert "given up" in shown["API log"] and f"{receiver.url}?token=***" in shown["API log"]
    assert json.loads(shown["healthz"])["provider"] == f"openai:m@http://***@127.0.0.1:{model.port}/v1"
    assert "token=***" in shown["webhooks"]
    # ... and no credential shows anywhere.
    leaks = {(place, name) for place, text in shown.items() for name, value in secrets.items() if value in text}
    assert not leaks, f"credentials shown: {sorted(leaks)}"
    assert not any("alice" in text or "otel:" in text for text in shown.values())
