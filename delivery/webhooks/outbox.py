"""Notifications into the outbox (any process: API or worker), and out of it (API processes).

`Webhooks.notify` is called where a task's lifecycle moves (runs.py, phases.py); it writes one
row per endpoint and never raises into the task. `WebhookSender` is a thread that claims due
rows and POSTs them from a small pool, so a slow receiver delays only its own deliveries, never
a task. What was sent and what came back is kept on each row (GET /api/task/{id}/webhooks).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from delivery import __version__
from delivery.events import format_timestamp
from delivery.settings import Settings
from delivery.tasks.records import TaskRecord
from delivery.tasks.store import TaskStore, WebhookDelivery
from delivery.webhooks.addresses import AddressNotAllowedError, check_url, pin

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
SENDERS = 4  # concurrent deliveries per process
BATCH = 16


class Notification(str, Enum):
    awaiting_confirmation = "task.awaiting_confirmation"
    step_finished = "task.step_finished"
    succeeded = "task.succeeded"
    failed = "task.failed"
    cancelled = "task.cancelled"


class Webhooks:
    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._store = store
        self._fixed = [url.strip() for url in settings.webhook_urls.split(",") if url.strip()]
        self._base_url = settings.public_base_url  # "" (links are paths) or an origin without a trailing /
        self.enabled = bool(settings.webhook_secret)

    def notify(self, record: TaskRecord, kind: Notification, **data: Any) -> None:
        """Queue `kind` for every endpoint of the task (WEBHOOK_URLS and its own webhook_url)."""
        targets = [*self._fixed, *([record.webhook_url] if record.webhook_url else [])]
        if not targets or not self.enabled:
            return
        now = time.time()
        task_id = record.task_id
        links = {
            "status_url": f"/api/task/{task_id}/status",
            "result_url": f"/api/task/{task_id}/result",
            "stream_url": f"/api/stream/{task_id}",
            **{k: v for k, v in data.items() if k.endswith("_url")},
        }
        body = {
            "type": kind.value,
            "timestamp": format_timestamp(now),
            "data": {
                "task_id": task_id,
                "status": record.status.value,
                "error": record.error,
                **data,
                **{name: self._base_url + path for name, path in links.items()},  # absolute with PUBLIC_BASE_URL
            },
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        deliveries = [
            WebhookDelivery(f"msg_{uuid.uuid4().hex}", task_id, url, kind.value, payload, now, next_attempt_at=now)
            for url in targets
        ]
        try:
            self._store.add_webhooks(deliveries)
        except Exception:  # a notification must never fail the task it is about
            log.exception("could not queue %s notifications for task %s", kind.value, task_id)


class WebhookSender:
    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._settings = settings
        self._store = store
        self._signer = Webhook(settings.webhook_secret)
        # Redirects are not followed: a redirect could lead to an address the rules refuse.
        # No kept-alive connections: requests name the pinned address, and a pool keyed by it
        # would reuse one host's TLS connection (its certificate, its SNI) for another host.
        self._client = httpx.Client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def problem(self) -> str | None:
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return "the webhook sender thread stopped; restart this process (its log says why)"
        return None

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _loop(self) -> None:
        while not self._stopping.wait(POLL_INTERVAL_S):
            try:
                now = time.time()
                # A claim outlasts one attempt; if this process dies mid-attempt another one retries.
                until = now + self._settings.webhook_timeout_s + 30
                for delivery in self._store.claim_due_webhooks(now, until, BATCH):
                    self._pool.submit(self.attempt, delivery)
            except Exception:
                log.exception("webhook sender pass failed")

    def attempt(self, delivery: WebhookDelivery) -> None:
        """One POST of `delivery`; its outcome (and the next attempt, if any) is stored."""
        s = self._settings
        started = time.time()
        status_code: int | None = None
        error: str | None = None
        permanent = False
        try:
            pinned = pin(delivery.url, check_url(delivery.url, s.webhook_allow_private))
            sent_at = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "user-agent": f"multi-agent-delivery/{__version__}",
                "webhook-id": delivery.webhook_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                "webhook-signature": self._signer.sign(delivery.webhook_id, sent_at, delivery.payload),
                "host": pinned.host,
            }
            extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else None
            response = self._client.post(
                pinned.url, content=delivery.payload.encode(), headers=headers, extensions=extensions
            )
            status_code = response.status_code
            if response.is_redirect:
                error = "the receiver answered with a redirect, which is not followed"
            elif not response.is_success:
                error = f"the receiver answered {status_code}"
        except AddressNotAllowedError as exc:
            error, permanent = f"not sent: the URL {exc}", True
        except Exception as exc:  # noqa: BLE001 - any failure is this attempt's outcome, recorded below
            error = f"{type(exc).__name__}: {exc}"[:500]
        finished = time.time()
        delivery.attempts.append(
            {
                "at": format_timestamp(started),
                "status_code": status_code,
                "error": error,
                "duration_ms": round((finished - started) * 1000),
            }
        )
        if error is None:
            delivery.state, delivery.delivered_at, delivery.next_attempt_at = "delivered", finished, None
        elif permanent or len(delivery.attempts) >= s.webhook_max_attempts:
            delivery.state, delivery.next_attempt_at = "failed", None
            log.warning("webhook %s to %s given up: %s", delivery.webhook_id, delivery.url, error)
        else:
            delivery.next_attempt_at = finished + s.webhook_retry_base_s * 4 ** (len(delivery.attempts) - 1)
        try:
            self._store.save_webhook(delivery)
        except Exception:  # the claim runs out and the delivery is retried
            log.exception("could not record webhook attempt %s", delivery.webhook_id)
