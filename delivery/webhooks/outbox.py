"""Notifications into the outbox (any process: API or worker), and out of it (API processes).

`Webhooks.notify` is called where a task's lifecycle moves (runs.py, phases.py); it writes one
row per endpoint and never raises into the task. `WebhookSender` claims due rows only as fast
as it has free senders, and POSTs each within one deadline, so a slow or hostile receiver
delays only its own deliveries, never a task or another receiver. What was sent and what came
back is kept on each row (GET /api/task/{id}/webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import httpx
from standardwebhooks.webhooks import Webhook

from delivery import __version__
from delivery.events import format_timestamp
from delivery.settings import Settings
from delivery.tasks.records import TaskRecord
from delivery.tasks.store import TaskStore, WebhookDelivery
from delivery.webhooks.addresses import AddressNotAllowedError, check_url, pin

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_INTERVAL_S = 0.5  # how often due rows are looked for while no sender frees up
# A claim outlasts the attempt it is for (at most WEBHOOK_TIMEOUT_S) by this much, time to store
# the outcome; if this process dies mid-attempt the claim runs out and another process retries.
CLAIM_MARGIN_S = 30.0
RESPONSE_BODY_CAP = 64 * 1024  # bytes of an answer's body read at most: only its status counts
SNIPPET_CHARS = 200  # of a failed answer's body, for the log
STOP_GRACE_S = 3.0  # attempts under way at a stop get this long to finish, then are handed back


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
    """A thread running an event loop with at most WEBHOOK_SENDERS attempts under way, and at
    most a quarter of them (at least one) to any one endpoint URL: a receiver that holds every
    attempt until the deadline takes its share of the senders, never all of them. Rows are
    claimed only for a free sender and sent at once, so none waits in memory while its claim
    runs out (it would be claimed, and sent, a second time)."""

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._settings = settings
        self._store = store
        self._signer = Webhook(settings.webhook_secret)
        self._senders = settings.webhook_senders
        self._per_url = max(1, self._senders // 4)
        self._in_flight: Counter[str] = Counter()  # attempts under way per URL (the loop's thread only)
        # Store calls leave the loop on a thread of their own: a slow database never stalls an
        # attempt's deadline, nor waits behind a slow DNS answer (those go to the loop's default pool).
        self._store_calls = ThreadPoolExecutor(1, thread_name_prefix="webhook-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # a sender is free, or the sender stops
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def problem(self) -> str | None:
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return "the webhook sender thread stopped; restart this process (its log says why)"
        return None

    def stop(self) -> None:
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(wake.set)
        self._thread.join(timeout=STOP_GRACE_S + 2)
        self._store_calls.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        # Each attempt under way, with its delivery and how many attempts that had when claimed.
        attempts: dict[asyncio.Task[None], tuple[WebhookDelivery, int]] = {}
        # Redirects are not followed: a redirect could lead to an address the rules refuse.
        # No kept-alive connections: requests name the pinned address, and a pool keyed by it
        # would reuse one host's TLS connection (its certificate, its SNI) for another host.
        # No timeouts of its own: each attempt's deadline bounds all of it (see `attempt`).
        client = httpx.AsyncClient(
            timeout=None,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        try:
            while not self._stopping.is_set():
                wake.clear()
                free = self._senders - len(attempts)
                claimed = await self._claim(free) if free else []
                for delivery in claimed:
                    self._in_flight[delivery.url] += 1
                    task = asyncio.create_task(self.attempt(client, delivery))
                    attempts[task] = (delivery, len(delivery.attempts))
                    task.add_done_callback(lambda done: self._finished(attempts.pop(done)[0], wake))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_INTERVAL_S)
        finally:
            await self._hand_back(attempts)
            await client.aclose()

    async def _claim(self, free: int) -> list[WebhookDelivery]:
        now = time.time()
        until = now + self._settings.webhook_timeout_s + CLAIM_MARGIN_S
        in_flight = dict(self._in_flight)  # a copy: the store reads it on its own thread
        try:
            claim = self._store.claim_due_webhooks
            return await self._in_store_thread(
                functools.partial(claim, now, until, free, per_url=self._per_url, in_flight=in_flight)
            )
        except Exception:  # the database is away: look again at the next pass
            log.exception("could not claim due webhooks; trying again in %s s", POLL_INTERVAL_S)
            return []

    def _finished(self, delivery: WebhookDelivery, wake: asyncio.Event) -> None:
        self._in_flight[delivery.url] -= 1
        if not self._in_flight[delivery.url]:
            del self._in_flight[delivery.url]
        wake.set()

    async def _hand_back(self, attempts: dict[asyncio.Task[None], tuple[WebhookDelivery, int]]) -> None:
        """Stopping: attempts under way get STOP_GRACE_S to finish; the rest are cut off and
        their rows made due again, so another process (or the next start) sends them at once
        instead of when their claims run out. An attempt cut off this way is not counted."""
        if not attempts:
            return
        _, unfinished = await asyncio.wait(list(attempts), timeout=STOP_GRACE_S)
        cut_off = [attempts[task] for task in unfinished]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for delivery, attempts_before in cut_off:
            if len(delivery.attempts) > attempts_before:  # cut off while its outcome was being stored
                continue
            delivery.next_attempt_at = time.time()
            try:
                self._store.save_webhook(delivery)
            except Exception:  # its claim runs out and it is retried then
                log.exception("could not hand back webhook %s", delivery.webhook_id)

    async def _in_store_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._store_calls, call)

    async def attempt(self, client: httpx.AsyncClient, delivery: WebhookDelivery) -> None:
        """One POST of `delivery` within WEBHOOK_TIMEOUT_S in all (the address check, connecting,
        sending, the answer); its outcome (and the next attempt, if any) is stored. Only the
        answer's status counts: at most RESPONSE_BODY_CAP bytes of its body are read."""
        s = self._settings
        started = time.time()
        status_code: int | None = None
        error: str | None = None
        permanent = False
        snippet = b""
        try:
            async with asyncio.timeout(s.webhook_timeout_s):
                loop = asyncio.get_running_loop()
                address = await loop.run_in_executor(None, check_url, delivery.url, s.webhook_allow_private)
                pinned = pin(delivery.url, address)
                sent_at = datetime.now(UTC)
                headers = {
                    **delivery.headers,  # the receiver's own (an A2A config's token): ours below win
                    "content-type": "application/json",
                    "user-agent": f"multi-agent-delivery/{__version__}",
                    "webhook-id": delivery.webhook_id,
                    "webhook-timestamp": str(int(sent_at.timestamp())),
                    "webhook-signature": self._signer.sign(delivery.webhook_id, sent_at, delivery.payload),
                    "host": pinned.host,
                    "accept-encoding": "identity",  # the body is read raw, never inflated
                }
                extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else None
                request = client.build_request(
                    "POST", pinned.url, content=delivery.payload.encode(), headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)
                try:
                    status_code = response.status_code
                    if response.is_redirect:
                        error = "the receiver answered with a redirect, which is not followed"
                    elif not response.is_success:
                        error = f"the receiver answered {status_code}"
                    snippet = await _read_at_most(response, RESPONSE_BODY_CAP)
                finally:
                    await response.aclose()  # closes the connection: whatever else it sends is never read
        except AddressNotAllowedError as exc:
            error, permanent = f"not sent: the URL {exc}", True
        except Exception as exc:  # noqa: BLE001 - any failure is this attempt's outcome, recorded below
            if status_code is None:  # once the status has come it decides, however the rest went
                error = _failure(exc, s.webhook_timeout_s)
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
        if error is not None and snippet:
            text = snippet[: SNIPPET_CHARS * 4].decode(errors="replace")[:SNIPPET_CHARS]
            log.info("webhook %s to %s: the receiver said %r", delivery.webhook_id, delivery.url, text)
        try:
            await self._in_store_thread(functools.partial(self._store.save_webhook, delivery))
        except Exception:  # the claim runs out and the delivery is retried
            log.exception("could not record webhook attempt %s", delivery.webhook_id)


def _failure(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):  # the attempt's deadline (asyncio.timeout), not one read's
        return (
            f"no answer within {timeout_s:g} s (WEBHOOK_TIMEOUT_S): the attempt was cut off; "
            "a receiver should answer at once and do its work afterwards"
        )
    return f"{type(exc).__name__}: {exc}"[:500]


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of the body (all of it when shorter), as they came on the wire."""
    kept = bytearray()
    async for chunk in response.aiter_raw():
        kept += chunk[: limit - len(kept)]
        if len(kept) >= limit:
            break
    return bytes(kept)
