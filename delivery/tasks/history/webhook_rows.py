"""The webhook outbox's rows (delivery/webhooks/outbox.py sends them)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select, update

from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import webhooks_table


@dataclass
class WebhookDelivery:
    webhook_id: str  # the webhook-id header: the same on every attempt, receivers dedupe by it
    task_id: str
    url: str
    event_type: str
    payload: str
    created_at: float
    state: str = "pending"  # pending, delivered, failed (gave up)
    next_attempt_at: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered_at: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every attempt (an A2A token)


class WebhookRows(Database):
    """The `webhook_deliveries` table."""

    @until_reachable
    def add_webhooks(self, deliveries: list[WebhookDelivery]) -> None:
        if not deliveries:
            return
        rows = [{**asdict(d), "attempts": json.dumps(d.attempts), "headers": json.dumps(d.headers)} for d in deliveries]
        with self._write_lock, self.engine.begin() as conn:
            for row in rows:  # by webhook id, so a repeat adds none twice
                conn.execute(self._insert_if_absent(webhooks_table, row))

    # Not retried: a repeat after a claim that committed would claim other rows, and the first
    # rows would wait out their claim. The sender's next pass asks again.
    def claim_due_webhooks(
        self,
        now: float,
        until: float,
        limit: int,
        per_url: int | None = None,
        in_flight: Mapping[str, int] | None = None,
    ) -> list[WebhookDelivery]:
        """Pending deliveries due at `now`, at most `limit`, each claimed until `until` (no other
        sender takes it); with `per_url`, at most that many per URL, counting the caller's
        attempts under way (`in_flight`, by URL)."""
        t = webhooks_table
        cap = per_url or limit
        busy = dict(in_flight or {})
        due = select(t).where(t.c.state == "pending", t.c.next_attempt_at <= now).order_by(t.c.next_attempt_at)
        full = [url for url, count in busy.items() if count >= cap]
        if full:  # their backlog must not fill the rows looked at, hiding other URLs' due rows
            due = due.where(t.c.url.not_in(full))
        claimed: list[WebhookDelivery] = []
        with self._write_lock, self.engine.begin() as conn:
            # Looking a little further than `limit`: rows of a URL that reaches its share here are skipped.
            for row in conn.execute(due.limit(limit * 4)).all():
                if len(claimed) == limit:
                    break
                if busy.get(row.url, 0) >= cap:
                    continue
                # Claimed only if no other process moved it meanwhile.
                taken = update(t).where(t.c.webhook_id == row.webhook_id, t.c.next_attempt_at == row.next_attempt_at)
                if conn.execute(taken.values(next_attempt_at=until)).rowcount == 1:
                    claimed.append(_webhook(row))
                    busy[row.url] = busy.get(row.url, 0) + 1
        return claimed

    @until_reachable
    def save_webhook(self, delivery: WebhookDelivery) -> None:
        """Store an attempt's outcome: state, attempts, next_attempt_at, delivered_at."""
        t = webhooks_table
        values = {
            "state": delivery.state,
            "next_attempt_at": delivery.next_attempt_at,
            "attempts": json.dumps(delivery.attempts),
            "delivered_at": delivery.delivered_at,
        }
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.webhook_id == delivery.webhook_id).values(**values))

    @until_reachable
    def webhooks(self, task_id: str) -> list[WebhookDelivery]:
        t = webhooks_table
        query = select(t).where(t.c.task_id == task_id).order_by(t.c.created_at, t.c.url)
        with self.engine.connect() as conn:
            return [_webhook(row) for row in conn.execute(query)]


def _webhook(row: Any) -> WebhookDelivery:
    data = dict(row._mapping)
    data["attempts"] = json.loads(data["attempts"])
    data["headers"] = json.loads(data["headers"] or "{}")  # NULL: a row of an earlier version
    return WebhookDelivery(**data)
