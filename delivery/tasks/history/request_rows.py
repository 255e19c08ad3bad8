"""Idempotency-Key claims and the answers remembered for them (delivery/api/idempotency.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select, update

from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import request_keys_table


@dataclass(frozen=True)
class RememberedRequest:
    fingerprint: str
    created_at: float
    status_code: int | None  # None: the first request with this key is still being worked on
    answer: str | None


class RequestRows(Database):
    """The `request_keys` table."""

    @until_reachable
    def claim_request(
        self, scope: str, fingerprint: str, now: float, abandoned_before: float, expired_before: float
    ) -> RememberedRequest | None:
        """Claim an idempotency scope for a new request (None), or return what is remembered
        for it. Claims unanswered since `abandoned_before`, and any made before
        `expired_before`, are forgotten first."""
        t = request_keys_table
        row = {"scope": scope, "fingerprint": fingerprint, "created_at": now, "status_code": None, "answer": None}
        with self._write_lock, self.engine.begin() as conn:
            # Abandoned claims (the process died mid-request) are taken over, answered ones kept.
            abandoned = and_(t.c.status_code.is_(None), t.c.created_at < abandoned_before)
            conn.execute(delete(t).where(t.c.scope == scope, or_(abandoned, t.c.created_at < expired_before)))
            # Insert-if-absent in one statement: another replica may be claiming the same key.
            # (RETURNING says whether it did: drivers report no rowcount for ON CONFLICT.)
            if conn.execute(self._insert_if_absent(t, row).returning(t.c.scope)).first() is not None:
                return None
            found = conn.execute(select(t).where(t.c.scope == scope)).one()
        if (found.fingerprint, found.created_at, found.status_code) == (fingerprint, now, None):
            return None  # this very claim, made by an attempt whose answer was lost: safe to repeat
        return RememberedRequest(found.fingerprint, found.created_at, found.status_code, found.answer)

    @until_reachable
    def answer_request(self, scope: str, status_code: int, answer: str) -> None:
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.scope == scope).values(status_code=status_code, answer=answer))

    @until_reachable
    def release_request(self, scope: str) -> None:
        """Forget a claim whose request failed, so that a retry with the same key runs it."""
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.scope == scope, t.c.status_code.is_(None)))

    @until_reachable
    def purge_requests_before(self, ts: float) -> int:
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            return conn.execute(delete(t).where(t.c.created_at < ts)).rowcount
