"""The watchdogs: deadlines, leases and reaping, recovery at start-up, interruption at shutdown,
and forgetting what has expired. `tick()` is called every half second by the process's host (the
API's maintenance coroutine, a worker's watchdog thread). The race rules are in runs.py."""

from __future__ import annotations

import logging
import time

from delivery.settings import EventBackendKind
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.runs import Ending, Runs

log = logging.getLogger(__name__)

INTERRUPTED = "Interrupted by server restart: the task was running or waiting when the server stopped. Submit it again."
SHUT_DOWN = "Interrupted: the server was shut down while the task ran. Submit it again."
WORKER_LOST = (
    "The worker running this task was lost: no heartbeat from {owner} for over {lease:g} s "
    "(killed, crashed or cut off). Submit the task again."
)


class Watchdog:
    def __init__(self, runs: Runs) -> None:
        self._runs = runs
        self._next_lease_pass = 0.0
        self._next_sweep = 0.0

    def tick(self, now: float | None = None) -> None:
        """One pass: deadlines every time; leases every TASK_LEASE_S/3; expiry about once a minute."""
        now = time.time() if now is None else now
        s = self._runs.settings
        self.check_deadlines(now)
        if now >= self._next_lease_pass:
            self._next_lease_pass = now + s.task_lease_s / 3
            self.heartbeat(now)
            self.reap_lost(now)
        if now >= self._next_sweep:
            self._next_sweep = now + min(60.0, max(s.stream_ttl_s / 4, 0.5))
            evicted = self._runs.streams.evict_expired(s.stream_ttl_s)
            purged = self._runs.store.purge_finished_before(now - s.task_retention_days * 86400)
            self._runs.store.purge_requests_before(now - s.idempotency_ttl_s)
            if evicted or purged:
                log.info("evicted %d streams from memory, purged %d old tasks", len(evicted), purged)

    def check_deadlines(self, now: float) -> None:
        """Fail phases that ran too long; cancel tasks nobody confirmed in time."""
        runs, s = self._runs, self._runs.settings
        for run in runs.all():
            with run.lock:
                if run.record.status is TaskStatus.running and run.active_seconds(now) > s.task_timeout_s:
                    runs.end_run(
                        run,
                        Ending.failed(
                            f"The task ran longer than TASK_TIMEOUT_S={s.task_timeout_s:g}s and was "
                            "stopped; raise TASK_TIMEOUT_S for larger requirements."
                        ),
                    )
        for record in runs.store.expired_confirmations(now):
            runs.end_idle_task(
                record,
                Ending.cancelled(
                    f"No confirmation within CONFIRMATION_TIMEOUT_S={s.confirmation_timeout_s:g}s; "
                    "the task was cancelled."
                ),
            )

    def heartbeat(self, now: float) -> None:
        """Renew the lease of every run held here."""
        held = self._runs.all()
        for run in held:  # a later save of the record must not write an older heartbeat back
            run.record.heartbeat_at = now
        self._runs.store.heartbeat(self._runs.instance_id, [run.record.task_id for run in held], now)

    def reap_lost(self, now: float) -> list[str]:
        """Fail queued or running phases of other processes whose lease ran out (any process may
        do it: the store lets exactly one succeed)."""
        runs, lease = self._runs, self._runs.settings.task_lease_s
        return [
            r.task_id
            for r in runs.store.unfinished()
            if r.status is not TaskStatus.awaiting_confirmation
            and r.owner is not None
            and runs.get(r.task_id) is None
            and (r.heartbeat_at or r.created_at) < now - lease
            and runs.end_idle_task(r, Ending.failed(WORKER_LOST.format(owner=r.owner, lease=lease)))
        ]

    def recover_at_start(self) -> list[str]:
        """At start-up: fail the phases an earlier run of this instance left queued or running
        (with the memory event backend there is only one process, so all such phases are dead).
        Tasks awaiting confirmation go on: with the memory backend their logs are reopened here
        (with Redis they live there). Returns the failed ids."""
        runs = self._runs
        single_process = runs.settings.event_backend is EventBackendKind.memory
        failed: list[str] = []
        for record in runs.store.unfinished():
            if record.status is TaskStatus.awaiting_confirmation:
                if single_process:
                    runs.streams.make_available(record.task_id, live=True)
            elif self._left_by_earlier_run(record, single_process) and runs.end_idle_task(
                record, Ending.failed(INTERRUPTED)
            ):
                failed.append(record.task_id)
        if failed:
            log.warning("marked %d tasks interrupted by the restart", len(failed))
        return failed

    def _left_by_earlier_run(self, record: TaskRecord, single_process: bool) -> bool:
        return (record.owner == self._runs.instance_id or single_process) and self._runs.get(record.task_id) is None

    def interrupt_all(self) -> list[str]:
        """On shutdown: end this process's queued and running phases with an `error` event, so
        their viewers learn it now (tasks awaiting confirmation are not running anywhere)."""
        runs, ended = self._runs, []
        for run in runs.all():
            with run.lock:
                if not run.record.status.finished and runs.end_run(run, Ending.failed(SHUT_DOWN)):
                    ended.append(run.record.task_id)
        return ended
