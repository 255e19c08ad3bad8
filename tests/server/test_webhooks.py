"""Webhooks against a real receiver that verifies Standard Webhooks signatures: what is sent and
when, retries, redirects, the address rules, and a restart with deliveries outstanding."""

from __future__ import annotations

import base64
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import stream_until, wait_finished
from tests.support.server_process import Server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import WebhookReceiver

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


def _settled(c: httpx.Client, task_id: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        hooks = _webhooks(c, task_id)
        return hooks if len(hooks) == count and all(h["state"] != "pending" for h in hooks) else None

    return wait_for(done, 30, message=lambda: f"{count} settled webhooks; now {_webhooks(c, task_id)}")


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
