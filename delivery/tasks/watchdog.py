"""The watchdogs: deadlines, leases and reaping, recovery at start-up, interruption at shutdown,
and forgetting what has expired. `tick()` is called every half second by the process's host (the
API's maintenance coroutine, a worker's watchdog thread). The race rules are in runs.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from delivery.settings import EventBackendKind
from delivery.tasks.instances import exited
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.runs import Ending, Runs
from delivery.tasks.store import HANDED_BACK_AT

log = logging.getLogger(__name__)

INTERRUPTED = "Interrupted by server restart: the task was running or waiting when the server stopped. Submit it again."
GAVE_UP = (
    "{lost} was lost while running this task; its phase had been started {attempts} time(s), "
    "as many as MAX_PHASE_ATTEMPTS={max_attempts} allows, so the task is given up. Submit it again."
)
ENDING_GRACE_S = 30.0
UNCLAIMED = "The message of its phase (no worker took it up within TASK_TIMEOUT_S={timeout:g} s)"
LOST_OWNER = "The worker {owner} (no heartbeat for over {lease:g} s: killed, crashed or cut off)"
EXITED_OWNER = "The process {owner} (it no longer runs: killed or crashed)"
HANDED_BACK = "{owner} stopped (a restart or deploy) and handed this task back"


class Watchdog:
    def __init__(self, runs: Runs, resume: Callable[[TaskRecord, str], bool] | None = None) -> None:
        """`resume(record, lost)` goes on with a task whose process was lost (TaskCommands.resume);
        without it such tasks are failed."""
        self._runs = runs
        self._resume = resume
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
            self.repair_endings(now)
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

    def repair_endings(self, now: float) -> list[str]:
        """With shared logs: finish the logs of tasks whose ending process died before their
        terminal event was stored (StreamManager.repair_ending). Only tasks that ended over
        ENDING_GRACE_S ago, whose own process, if alive, has long stored its event."""
        streams = self._runs.streams
        if not streams.shared:  # one process: a log reloaded after a restart is repaired as it loads
            return []
        since = now - self._runs.settings.stream_ttl_s  # after that, Redis no longer has the events
        repaired = self._runs.store.finished_without_ending(since, now - ENDING_GRACE_S)
        for record in repaired:
            log.warning("task %s ended without its terminal event stored; repairing its log", record.task_id)
            streams.repair_ending(record)
        return [r.task_id for r in repaired]

    def heartbeat(self, now: float) -> None:
        """Renew the lease of every run held here; stop the crews of runs another process took
        over (this one was thought lost: cut off from the database for longer than the lease)."""
        runs = self._runs
        held = runs.all()
        for run in held:  # a later save of the record must not write an older heartbeat back
            run.record.heartbeat_at = now
        taken = runs.store.heartbeat(runs.instance_id, {run.record.task_id: run.record.attempts for run in held}, now)
        runs.renewed_lease(now)
        for task_id in taken:
            lost = runs.get(task_id)
            if lost is not None:
                log.warning("task %s was taken over by another process; its crew here stops", task_id)
                lost.aborted.set()
                runs.release(lost)

    def reap_lost(self, now: float) -> list[str]:
        """Resume (or, past MAX_PHASE_ATTEMPTS, fail) queued or running phases of other processes
        whose lease ran out; any process may do it, the store lets exactly one succeed. The lost
        owner, if it still lives, is fenced off: its attempt is over, so the store refuses its
        writes and it stopped its crew before its lease ran out (Runs.lease_until). Phases handed
        back by a process that stopped gracefully are resumed at once, and so are those of a
        process on this host that is known to have exited (instances.exited)."""
        runs, lease, timeout = self._runs, self._runs.settings.task_lease_s, self._runs.settings.task_timeout_s
        lost: list[str] = []
        beat = time.monotonic()
        for r in runs.store.unfinished():
            # Resuming takes a few writes per task; after a process handed back many, a pass can
            # outlast this process's own lease (renewed between passes): keep renewing it.
            if time.monotonic() - beat > lease / 3:
                self.heartbeat(time.time())
                beat = time.monotonic()
            if r.status is TaskStatus.awaiting_confirmation or runs.get(r.task_id) is not None:
                continue
            since = r.created_at if r.heartbeat_at is None else r.heartbeat_at
            if r.heartbeat_at == HANDED_BACK_AT:
                how = HANDED_BACK.format(owner=r.owner or "its process")
            elif r.owner is not None and since < now - lease:
                how = LOST_OWNER.format(owner=r.owner, lease=lease)
            elif r.owner is not None and exited(r.owner):
                how = EXITED_OWNER.format(owner=r.owner)  # on this host: no lease to wait out
            elif r.owner is None and since < now - timeout:  # dispatched, never claimed: the message is gone
                how = UNCLAIMED.format(timeout=timeout)
            else:
                continue
            if self._recover(r, how):
                lost.append(r.task_id)
        return lost

    def _recover(self, record: TaskRecord, lost: str) -> bool:
        """Resume a task whose process is gone, or fail it (no resume, or no attempts left).
        True when this watchdog did either (False: another process was first)."""
        if self._resume is None:
            return self._runs.end_idle_task(record, Ending.failed(INTERRUPTED))
        if self._resume(record, lost):
            return True
        s = self._runs.settings
        gave_up = GAVE_UP.format(lost=lost, attempts=record.attempts, max_attempts=s.max_phase_attempts)
        return self._runs.end_idle_task(record, Ending.failed(gave_up))

    def recover_at_start(self) -> list[str]:
        """At start-up: go on with the phases an earlier run of this instance (the same
        INSTANCE_ID, when one is set) left queued or running, from their first unfinished agent
        (failed past MAX_PHASE_ATTEMPTS; with the memory event backend there is only one process,
        so all such phases are dead). A default id is this process's own: the phases of its
        predecessor are resumed by `reap_lost`, at its first pass when that process ran on this
        host (instances.exited), else when their lease runs out.
        Tasks awaiting confirmation go on: with the memory backend their logs are reopened here
        (with Redis they live there). Returns the failed ids."""
        runs = self._runs
        single_process = runs.settings.event_backend is EventBackendKind.memory
        failed: list[str] = []
        for record in runs.store.unfinished():
            if record.status is TaskStatus.awaiting_confirmation:
                if single_process:
                    runs.streams.make_available(record.task_id, live=True)
            elif self._left_by_earlier_run(record, single_process) and self._recover(
                record,
                HANDED_BACK.format(owner=record.owner or "this server")
                if record.heartbeat_at == HANDED_BACK_AT
                else f"The process running it ({record.owner or 'this server'}, before its restart)",
            ):
                failed.append(record.task_id)
        if failed:
            log.warning("recovered %d tasks interrupted by the restart", len(failed))
        return failed

    def _left_by_earlier_run(self, record: TaskRecord, single_process: bool) -> bool:
        return (record.owner == self._runs.instance_id or single_process) and self._runs.get(record.task_id) is None
