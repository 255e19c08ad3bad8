"""What a notification says: its links are paths on this service, or absolute with PUBLIC_BASE_URL;
and how due deliveries are claimed: never more than a sender can take, nor more per URL."""

from __future__ import annotations

import base64
import json
import os

import pytest
from pydantic import ValidationError

from delivery.settings import Settings
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.store import TaskStore, WebhookDelivery
from delivery.webhooks.outbox import Notification, Webhooks

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _payload(tmp_path, **settings) -> dict:
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    try:
        config = Settings(
            _env_file=None, webhook_secret=SECRET, webhook_urls="https://hooks.example.com/in", **settings
        )
        record = TaskRecord(task_id="t-1", requirement="r", skip_confirmation=False, language="en")
        record.status = TaskStatus.awaiting_confirmation
        Webhooks(config, store).notify(record, Notification.awaiting_confirmation, confirm_url="/api/task/t-1/confirm")
        [delivery] = store.webhooks("t-1")
        return json.loads(delivery.payload)["data"]
    finally:
        store.close()


def test_links_are_paths_without_a_public_base_url(tmp_path):
    data = _payload(tmp_path)
    assert (data["status_url"], data["result_url"], data["stream_url"], data["confirm_url"]) == (
        "/api/task/t-1/status",
        "/api/task/t-1/result",
        "/api/stream/t-1",
        "/api/task/t-1/confirm",
    )


def test_links_are_absolute_with_a_public_base_url(tmp_path):
    data = _payload(tmp_path, public_base_url="https://delivery.example.com/team-a/")
    assert data["confirm_url"] == "https://delivery.example.com/team-a/api/task/t-1/confirm"
    assert data["stream_url"] == "https://delivery.example.com/team-a/api/stream/t-1"
    assert data["status"] == "awaiting_confirmation" and data["task_id"] == "t-1"


@pytest.mark.parametrize(
    "bad", ["delivery.example.com", "ftp://x.example.com", "https://x.example.com/?a=1", "https://"]
)
def test_a_public_base_url_that_is_no_http_address_is_refused_saying_what_to_write(bad):
    with pytest.raises(ValidationError, match="PUBLIC_BASE_URL"):
        Settings(_env_file=None, public_base_url=bad)


def _due(url: str, webhook_id: str, at: float) -> WebhookDelivery:
    return WebhookDelivery(webhook_id, "t-1", url, "task.succeeded", "{}", at, next_attempt_at=at)


def test_a_claim_takes_at_most_per_url_and_skips_the_backlog_of_busy_urls(tmp_path):
    """A receiver with a long backlog due first must not fill the claim (the rows looked at) and
    hide another receiver's due row: URLs at their share are left out of the query."""
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    try:
        slow, other = "https://slow.example.com/in", "https://other.example.com/in"
        store.add_webhooks([_due(slow, f"slow_{n}", 100.0 + n) for n in range(20)] + [_due(other, "other", 200.0)])
        # slow has its share under way: only other's row is claimed, though 20 of slow's come first.
        claimed = store.claim_due_webhooks(300.0, 400.0, 2, per_url=2, in_flight={slow: 2})
        assert [d.url for d in claimed] == [other]
        # slow has one under way: one more of it (the oldest), however many senders are free.
        claimed = store.claim_due_webhooks(300.0, 400.0, 3, per_url=2, in_flight={slow: 1})
        assert [d.webhook_id for d in claimed] == ["slow_0"]
        # No share: the oldest due rows, as many as asked; claimed rows are not due again until 400.
        claimed = store.claim_due_webhooks(300.0, 400.0, 3)
        assert [d.webhook_id for d in claimed] == ["slow_1", "slow_2", "slow_3"]
        assert len(store.claim_due_webhooks(399.0, 500.0, 30)) == 16
        assert store.claim_due_webhooks(399.0, 500.0, 30) == []
    finally:
        store.close()
