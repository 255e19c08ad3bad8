"""Webhooks against a real receiver that verifies Standard Webhooks signatures: what is sent and
when, retries, redirects, the address rules, a restart with deliveries outstanding, and hostile
receivers (one that answers a byte a second forever, one that answers a gigabyte)."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import stream_until, wait_finished
from tests.support.server_process import Server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import TrickleReceiver, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
FAST = {"webhook_secret": SECRET, "webhook_allow_private": "true", "webhook_retry_base_s": 0.2}


@pytest.fixture(scope="module")
def strict_server(start_server: Callable[..., Server]) -> Server:
    return start_server(webhook_secret=SECRET)  # WEBHOOK_ALLOW_PRIVATE off


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


def _webhooks(c: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    r = c.get(f"/api/task/{task_id}/webhooks")
    assert r.status_code == 200
    hooks: list[dict[str, Any]] = r.json()["webhooks"]
    return hooks


def _settled(c: httpx.Client, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        hooks = _webhooks(c, task_id)
        return hooks if len(hooks) == count and all(h["state"] != "pending" for h in hooks) else None

    return wait_for(done, timeout, message=lambda: f"{count} settled webhooks; now {_webhooks(c, task_id)}")


@pytest.fixture
def trickle() -> Iterator[TrickleReceiver]:
    r = TrickleReceiver()
    yield r
    r.stop()


def test_a_task_notifies_its_webhook_of_each_stage_signed(start_server: Callable[..., Server], receiver):
    server = start_server(**FAST)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "webhook_url": receiver.url, "webhook_steps": True}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        stream_until(server.url, task_id, "awaiting_confirmation")
        waiting = wait_for(
            lambda: [r for r in receiver.received if r.body["type"] == "task.awaiting_confirmation"], 30
        )[0]
        assert waiting.body["data"]["confirm_url"] == f"/api/task/{task_id}/confirm"
        assert waiting.body["data"]["status"] == "awaiting_confirmation"
        c.post(f"/api/task/{task_id}/confirm", json={"approved": True})
        assert wait_finished(c, task_id)["status"] == "succeeded"
        hooks = _settled(c, task_id, 6)

    # Deliveries run in parallel, so arrival order is not guaranteed; each arrives once.
    assert Counter(receiver.types(task_id)) == {
        "task.step_finished": 4,
        "task.awaiting_confirmation": 1,
        "task.succeeded": 1,
    }
    assert receiver.refused == 0
    steps = sorted(r.body["data"]["agent"] for r in receiver.received if r.body["type"] == "task.step_finished")
    assert steps == sorted(["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"])
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(set(ids)) == 6 and all(i.startswith("msg_") for i in ids)
    assert {h["webhook_id"] for h in hooks} == set(ids)
    for hook in hooks:
        assert hook["state"] == "delivered" and hook["url"] == receiver.url
        assert [a["status_code"] for a in hook["attempts"]] == [204]
        assert hook["payload"]["data"]["task_id"] == task_id


def test_a_receiver_named_by_host_gets_the_request_at_the_checked_address_with_its_host(
    start_server: Callable[..., Server], receiver
):
    """Each attempt connects to the address the check resolved (no second lookup an attacker's
    DNS could answer differently), and the receiver still sees the name it was called by."""
    server = start_server(**FAST)
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": by_name}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        assert wait_finished(c, task_id)["status"] == "succeeded"
        [hook] = _settled(c, task_id, 1)
    assert hook["state"] == "delivered" and hook["url"] == by_name
    [received] = receiver.received
    assert received.headers["host"] == f"localhost:{receiver.port}"


def test_failed_deliveries_are_retried_then_given_up(start_server: Callable[..., Server], receiver):
    server = start_server(**FAST, webhook_urls=receiver.url, webhook_max_attempts=3)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        receiver.answers = [500, 503]  # then 204
        first = c.post("/api/run_task", json={"user_requirement": "A wiki", "skip_confirmation": True}).json()
        wait_finished(c, first["task_id"])
        [hook] = _settled(c, first["task_id"], 1)  # WEBHOOK_URLS: every task, without asking
        assert hook["state"] == "delivered"
        assert [a["status_code"] for a in hook["attempts"]] == [500, 503, 204]
        assert hook["attempts"][0]["error"] == "the receiver answered 500"

        receiver.answers = [302, 302, 302]  # a redirect is not followed, and counts as a failure
        second = c.post("/api/run_task", json={"user_requirement": "A blog", "skip_confirmation": True}).json()
        [hook] = _settled(c, second["task_id"], 1)
        assert hook["state"] == "failed"
        assert [a["status_code"] for a in hook["attempts"]] == [302, 302, 302]
        assert "redirect" in hook["attempts"][-1]["error"]
    assert receiver.types(second["task_id"]) == []


def test_a_receiver_with_another_secret_refuses_every_notification(start_server: Callable[..., Server]):
    other = WebhookReceiver("whsec_" + base64.b64encode(os.urandom(32)).decode())
    try:
        server = start_server(**FAST, webhook_max_attempts=1)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": other.url}
            task_id = c.post("/api/run_task", json=body).json()["task_id"]
            [hook] = _settled(c, task_id, 1)
        assert hook["state"] == "failed" and hook["attempts"][0]["status_code"] == 400
        assert other.refused == 1 and other.received == []
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8080/hook", "resolves to 127.0.0.1, a loopback, link-local, private or reserved address"),
        ("http://localhost/hook", "a loopback, link-local, private or reserved address"),
        ("http://169.254.169.254/latest/meta-data", "resolves to 169.254.169.254"),
        ("http://10.1.2.3/hook", "resolves to 10.1.2.3"),
        ("http://[::1]/hook", "resolves to ::1"),
        ("http://0.0.0.0/hook", "resolves to 0.0.0.0"),
        ("ftp://example.com/hook", "must be an http:// or https:// URL"),
        ("https://user:pw@example.com/hook", "must not carry credentials"),
        ("http://x\x00y/hook", "webhook_url contains a NUL character"),
        ("http://[::1/hook", "is not a URL"),
    ],
)
def test_webhook_urls_must_be_public(strict_server: Server, url: str, says: str):
    server = strict_server
    body = {"user_requirement": "A wiki", "webhook_url": url}
    r = httpx.post(server.url + "/api/run_task", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert says in r.text and "webhook_url" in r.text


def test_without_a_secret_the_server_says_it_sends_no_webhooks(server: Server):
    body = {"user_requirement": "A wiki", "webhook_url": "https://example.com/hook"}
    r = httpx.post(server.url + "/api/run_task", json=body, timeout=30)
    assert r.status_code == 422 and "sends no webhooks" in r.json()["detail"]


def test_a_slow_receiver_does_not_hold_up_the_task(start_server: Callable[..., Server], receiver):
    receiver.delay_s = 3
    server = start_server(**FAST)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {
            "user_requirement": "A wiki",
            "skip_confirmation": True,
            "webhook_url": receiver.url,
            "webhook_steps": True,
        }
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        assert wait_finished(c, task_id)["status"] == "succeeded"
        # The task has ended while its notifications are still on their way.
        assert any(h["state"] == "pending" for h in _webhooks(c, task_id))
        _settled(c, task_id, 5)
    assert Counter(receiver.types(task_id)) == {"task.step_finished": 4, "task.succeeded": 1}


def test_notifications_outstanding_at_a_crash_are_delivered_after_the_restart(
    start_server: Callable[..., Server], receiver, tmp_path
):
    settings = {**FAST, "webhook_retry_base_s": 1, "data_dir": str(tmp_path / "data")}
    first = start_server(**settings)
    receiver.answers = [503] * 1000
    with httpx.Client(base_url=first.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": receiver.url}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        wait_finished(c, task_id)
        wait_for(lambda: _webhooks(c, task_id) and _webhooks(c, task_id)[0]["attempts"], 30)
    first.kill()
    receiver.answers = []
    second = start_server(**settings)
    with httpx.Client(base_url=second.url, timeout=30) as c:
        [hook] = _settled(c, task_id, 1)
    assert hook["state"] == "delivered" and hook["attempts"][-1]["status_code"] == 204
    assert all(a["status_code"] == 503 for a in hook["attempts"][:-1])
    assert receiver.types(task_id) == ["task.succeeded"]


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def test_a_receiver_that_answers_a_byte_a_second_is_cut_at_the_deadline_and_retried(
    start_server: Callable[..., Server], trickle: TrickleReceiver
):
    """WEBHOOK_TIMEOUT_S bounds the whole attempt, not each read: a receiver whose answer never
    ends (one byte a second, so no single read ever waits long) is cut off at the deadline; the
    attempt counts as failed and is retried after the usual backoff."""
    server = start_server(**{**FAST, "webhook_retry_base_s": 1}, webhook_timeout_s=2, webhook_max_attempts=2)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": trickle.url}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        [hook] = _settled(c, task_id, 1)
    assert hook["state"] == "failed"
    first, second = hook["attempts"]
    for attempt in (first, second):
        assert attempt["status_code"] is None
        assert attempt["error"].startswith("no answer within 2 s (WEBHOOK_TIMEOUT_S)"), attempt
        assert 1990 <= attempt["duration_ms"] < 2800, attempt
    waited = _epoch(second["at"]) - (_epoch(first["at"]) + first["duration_ms"] / 1000)
    assert 0.99 <= waited < 2.5  # WEBHOOK_RETRY_BASE_S, then the next claim
    # The receiver saw both connections end at the deadline: we hung up, it did not.
    assert len(trickle.connections) == 2
    for connection in trickle.connections:
        assert connection.closed is not None and 1.8 <= connection.closed - connection.opened < 2.8


def _memory_kb(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak since it was last reset) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")


@pytest.mark.parametrize(("status", "state"), [(200, "delivered"), (500, "failed")])
def test_a_receiver_answering_a_gigabyte_costs_the_server_no_memory(
    start_server: Callable[..., Server], receiver: WebhookReceiver, status: int, state: str
):
    """Only the status of an answer counts: at most the first 64 KiB of its body are read, the rest
    is never received, so a receiver streaming 1 GiB grows the server's peak memory by no more
    than a few MB, and the delivery is recorded by the status."""
    receiver.gate = threading.Event()  # held until the server's memory is measured
    receiver.answers = [status]
    receiver.huge_body_bytes = 1 << 30
    server = start_server(**FAST, webhook_max_attempts=1, webhook_timeout_s=30)
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": receiver.url}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        wait_finished(c, task_id)
        wait_for(lambda: receiver.arrived == 1, 30, message="the notification to reach the receiver")
        before_kb = _memory_kb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        receiver.gate.set()
        [hook] = _settled(c, task_id, 1, timeout=60)
        peak_kb = _memory_kb(pid, "VmHWM")
    assert hook["state"] == state
    assert [a["status_code"] for a in hook["attempts"]] == [status]
    assert peak_kb - before_kb < 8 * 1024, f"the server's peak memory grew by {peak_kb - before_kb} KiB"
    # The rest of the gigabyte was never taken: the connection closed after the first bytes.
    wait_for(lambda: receiver.streaming == 0, 30, message="the receiver to stop sending")
    assert receiver.streamed < 64 << 20, f"the receiver sent {receiver.streamed} bytes"


def test_with_few_senders_and_a_slow_receiver_each_delivery_is_sent_once(
    start_server: Callable[..., Server], receiver: WebhookReceiver
):
    """Deliveries are claimed only when a sender is free to send them: none waits in memory, so
    none outlives its claim and is claimed (and sent) again by the next pass. 100 deliveries to
    a receiver taking 2 s each, 4 senders: the last one is sent ~50 s after the first, longer
    than a claim lasts (the deadline + 30 s)."""
    receiver.delay_s = 2
    endpoints = [f"{receiver.url}/{n}" for n in range(4)]  # one sender each at most (4 senders)
    server = start_server(
        **FAST, webhook_urls=",".join(endpoints), webhook_senders=4, webhook_timeout_s=2.5, webhook_max_attempts=1
    )
    with httpx.Client(base_url=server.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_steps": True}
        task_ids = [c.post("/api/run_task", json=body).json()["task_id"] for _ in range(5)]
        hooks = [hook for task_id in task_ids for hook in _settled(c, task_id, 20, timeout=120)]
    # A second copy would come after the first (a re-claimed row goes to the back of the line):
    # wait until the receiver has had nothing to do for longer than one delivery takes.
    wait_for(
        lambda: receiver.arrived == len(receiver.received) and time.time() - receiver.received[-1].at > 3,
        60,
        message="the receiver to fall quiet",
    )
    assert len(hooks) == 100  # 5 tasks x (4 steps + succeeded) x 4 endpoints
    assert {h["state"] for h in hooks} == {"delivered"}
    assert {len(h["attempts"]) for h in hooks} == {1}
    sent = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert sent == Counter({h["webhook_id"]: 1 for h in hooks}), [i for i, n in sent.items() if n > 1]
    assert Counter(r.path for r in receiver.received) == {f"/hook/{n}": 25 for n in range(4)}


def test_a_receiver_that_never_answers_delays_no_other_receiver(
    start_server: Callable[..., Server], receiver: WebhookReceiver, trickle: TrickleReceiver
):
    """A receiver with more deliveries due than there are senders, holding each attempt until the
    deadline (10 s), takes only its share of the senders (a quarter; here one of four): another
    receiver gets its notification at once."""
    server = start_server(**FAST, webhook_senders=4, webhook_max_attempts=1)  # WEBHOOK_TIMEOUT_S=10
    with httpx.Client(base_url=server.url, timeout=30) as c:
        slow = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": trickle.url}
        slow["webhook_steps"] = True  # 5 notifications
        slow_id = c.post("/api/run_task", json=slow).json()["task_id"]
        wait_finished(c, slow_id)
        wait_for(lambda: trickle.connections, 10, message="the slow receiver to be held")
        body = {"user_requirement": "A blog", "skip_confirmation": True, "webhook_url": receiver.url}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        wait_finished(c, task_id)
        [received] = wait_for(lambda: receiver.received, 8, message="the other receiver's notification")
        assert all(h["state"] == "pending" for h in _webhooks(c, slow_id))  # still held or waiting
    assert received.body["type"] == "task.succeeded" and received.body["data"]["task_id"] == task_id
    queued_s = received.at - _epoch(received.body["timestamp"])
    assert queued_s < 2.0, f"the notification waited {queued_s:.1f} s"


def test_an_attempt_cut_off_by_a_graceful_stop_is_sent_at_once_after_the_restart(
    start_server: Callable[..., Server], receiver: WebhookReceiver, tmp_path
):
    """On SIGTERM an attempt still under way gets a moment, then is cut off and its row made due
    again (not counted as an attempt): the next process sends it at once, not when the claim
    (WEBHOOK_TIMEOUT_S + 30 s) runs out."""
    settings = {**FAST, "data_dir": str(tmp_path / "data")}
    receiver.gate = threading.Event()  # the first attempt gets no answer
    first = start_server(**settings)
    with httpx.Client(base_url=first.url, timeout=30) as c:
        body = {"user_requirement": "A wiki", "skip_confirmation": True, "webhook_url": receiver.url}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        wait_finished(c, task_id)
        wait_for(lambda: receiver.arrived == 1, 30, message="the notification to reach the receiver")
    first.stop()
    receiver.gate.set()
    second = start_server(**settings)
    restarted = time.monotonic()
    with httpx.Client(base_url=second.url, timeout=30) as c:
        [hook] = _settled(c, task_id, 1, timeout=20)
    assert time.monotonic() - restarted < 5
    assert hook["state"] == "delivered" and [a["status_code"] for a in hook["attempts"]] == [204]
    assert receiver.arrived == 2
