"""What users ask of a task: submit it, answer the confirmation, cancel it. Called on API
threads, in any process; the race rules are in runs.py."""

from __future__ import annotations

import copy
import logging
import time
import uuid
from typing import NamedTuple

from agents_config import detect_language
from delivery.crew.roster import ROSTER
from delivery.errors import InvalidRequestError, ServiceUnavailableError, StreamClosedError, TaskStateConflictError
from delivery.events import SYSTEM_AGENT, EventType
from delivery.llm.providers import writing_language
from delivery.llm.usage import agent_usage, task_budget
from delivery.observability import tracing
from delivery.settings import EventBackendKind
from delivery.tasks.executors import Executor
from delivery.tasks.phases import confirmation_prompt
from delivery.tasks.records import Phase, TaskPriority, TaskRecord, TaskStatus
from delivery.tasks.runs import Ending, Run, Runs
from delivery.tasks.store import HANDED_BACK_AT
from delivery.webhooks.addresses import AddressNotAllowedError, check_url

log = logging.getLogger(__name__)


class TaskCommands:
    def __init__(self, runs: Runs, executor: Executor) -> None:
        self._runs = runs
        self._executor = executor

    def submit(
        self,
        requirement: str,
        skip_confirmation: bool,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        webhook_url: str | None = None,
        webhook_steps: bool = False,
        priority: TaskPriority = TaskPriority.normal,
    ) -> TaskRecord:
        """A new task; `max_tokens`/`max_cost` lower the server's budget for it (InvalidRequestError
        when they ask for more); `webhook_url` gets its notifications (InvalidRequestError when it
        may not)."""
        settings = self._runs.settings
        if webhook_url is not None:
            self._check_webhook_url(webhook_url)
        record = TaskRecord(
            task_id=str(uuid.uuid4()),
            requirement=requirement,
            skip_confirmation=skip_confirmation,
            language=writing_language(settings, detect_language(requirement)),
            budget=task_budget(settings.max_tokens_per_task, settings.max_cost_per_task, max_tokens, max_cost),
            webhook_url=webhook_url,
            webhook_steps=webhook_steps,
            priority=priority,
            phase=Phase.analysis,
        )
        tracing.start_task(record)
        self._assign(record)
        self._runs.store.save(record)
        # From here on a failure must leave nothing that runs later (the client is told 503 and
        # retries): the saved task is ended, as not started, before the answer goes out.
        try:
            self._runs.streams.open(record.task_id)
        except Exception as exc:  # whatever the backend raises, the task cannot start
            raise self._not_started(record, self._events_part(), exc) from exc
        run = self._hold(record)
        try:
            self._executor.dispatch(record.task_id, Phase.analysis, record.attempts, record.priority)
        except Exception as exc:  # each broker transport raises its own errors
            if run is not None:
                self._runs.release(run)
            raise self._not_started(record, self._executor_part(), exc) from exc
        return record

    def _not_started(self, record: TaskRecord, part: _Part, exc: Exception) -> ServiceUnavailableError:
        """End a submission that failed half-way; the 503 that says so."""
        log.error("task %s could not be started: %s failed", record.task_id, part.name, exc_info=exc)
        failure = f"{part.name} failed ({type(exc).__name__})"
        self._runs.end_unstarted(
            record, f"Not started: {failure} as it was submitted; the request was answered 503. Submit it again."
        )
        return ServiceUnavailableError(
            f"The task could not be started: {failure}. Nothing will run (task {record.task_id} is "
            "recorded as failed). Retry in a few seconds, with the same Idempotency-Key if you sent "
            f"one; operators: check {part.settings} and GET /readyz."
        )

    def _events_part(self) -> _Part:
        if self._runs.settings.event_backend is EventBackendKind.redis:
            return _Part("the event log (Redis)", "REDIS_URL and that Redis is up")
        return _Part("the event log", "the server log")

    def _executor_part(self) -> _Part:
        if self._executor.local:
            return _Part("this server's crew pool (the server is stopping)", "that the server is up")
        return _Part("the task queue (the Celery broker)", "CELERY_BROKER_URL (or REDIS_URL) and that the broker is up")

    def _check_webhook_url(self, url: str) -> None:
        if not self._runs.webhooks.enabled:
            raise InvalidRequestError(
                "webhook_url: this server sends no webhooks (the operator has not set WEBHOOK_SECRET); "
                "leave webhook_url out and follow the stream or poll the status instead."
            )
        try:
            check_url(url, self._runs.settings.webhook_allow_private)
        except AddressNotAllowedError as exc:
            raise InvalidRequestError(f"webhook_url {exc}.") from None

    def confirm(self, task_id: str, approved: bool, feedback: str | None) -> TaskRecord:
        runs, settings = self._runs, self._runs.settings
        r = runs.store.get(task_id)
        if r.status is not TaskStatus.awaiting_confirmation:
            raise _not_waiting(r)
        waiting = copy.deepcopy(r)  # to put back should the answer's phase not be dispatched
        if not approved and not feedback:
            raise InvalidRequestError(
                "To request changes, say what to change in `feedback`; to stop the task, "
                f"POST /api/task/{task_id}/cancel."
            )
        if not approved and len(r.feedback) >= settings.max_revision_rounds:
            raise TaskStateConflictError(
                f"The ProductManager has already revised {len(r.feedback)} times "
                f"(MAX_REVISION_ROUNDS={settings.max_revision_rounds}); approve the "
                "analysis or cancel the task."
            )
        r.status, r.confirm_deadline = TaskStatus.running, None
        r.phase, r.attempts = (Phase.delivery if approved else Phase.analysis), 1
        # The next phase is this process's (local) or nobody's until a worker takes it: the owner
        # of the analysis, its heartbeat long stale, would look lost to every watchdog.
        self._assign(r)
        if not approved:
            r.feedback.append(feedback or "")
        if not runs.store.transition(r, TaskStatus.awaiting_confirmation):
            raise _not_waiting(runs.store.get(task_id))  # someone answered or cancelled first
        run = self._hold(r)
        content = "Approved" if approved else f"Changes requested: {feedback}"
        try:
            runs.streams.publish(
                task_id,
                "User",
                EventType.confirmed.value,
                content,
                {"approved": approved, "feedback": feedback, "revision_round": len(r.feedback)},
            )
        except StreamClosedError:  # cancelled between our update and this event
            if run is not None:
                runs.release(run)
            raise _not_waiting(runs.store.get(task_id)) from None
        try:
            self._executor.dispatch(task_id, r.phase, r.attempts, r.priority)
        except Exception as exc:  # noqa: BLE001 - each broker transport raises its own errors
            if run is not None:
                runs.release(run)
            self._undo_confirmation(waiting, r, exc)
        return r

    def _undo_confirmation(self, waiting: TaskRecord, confirmed: TaskRecord, exc: Exception) -> None:
        """The answer's phase could not be dispatched: put the task back to awaiting confirmation
        (as it was, with the same deadline) and ask again, so the client's retry answers afresh
        (ServiceUnavailableError). Returns when a worker took the phase up after all (the
        message had reached the broker): the answer stands."""
        runs, task_id, part = self._runs, confirmed.task_id, self._executor_part()
        log.error("task %s: the confirmed %s phase could not be dispatched", task_id, confirmed.phase, exc_info=exc)
        failure = f"{part.name} failed ({type(exc).__name__})"
        assert confirmed.phase is not None
        if not runs.store.revert_confirmation(waiting, confirmed.phase, confirmed.owner):
            now = runs.store.get(task_id)
            if now.status.finished:
                raise _not_waiting(now) from exc  # cancelled or timed out meanwhile
            return  # taken up: it runs
        # Viewers saw `confirmed`: the question is asked again, as it was, saying why.
        undone = {"not_applied": f"The answer was undone: {failure}."}
        asked = next((e for e in reversed(runs.streams.events(task_id)) if e.event_type == _ASKED), None)
        if asked is not None:
            runs.streams.publish(task_id, asked.agent_name, _ASKED, asked.content, {**(asked.metadata or {}), **undone})
        else:  # its log does not have it (not yet archived): ask from the record
            rounds_left = runs.settings.max_revision_rounds - len(waiting.feedback)
            analysis = waiting.deliverables.get(ROSTER.analyst.deliverable, "")
            prompt = confirmation_prompt(task_id, analysis, rounds_left)
            runs.streams.publish(task_id, ROSTER.analyst.name, _ASKED, prompt, undone)
        raise ServiceUnavailableError(
            f"Your answer could not be carried out: {failure}. It was undone: the task awaits your "
            "confirmation again. Answer again in a few seconds, with the same Idempotency-Key if you "
            f"sent one; operators: check {part.settings} and GET /readyz."
        ) from exc

    def resume(self, record: TaskRecord, lost: str) -> bool:
        """Go on with a task whose phase was lost with its process, or handed back by it as it
        stopped (`lost` says which): from the first agent that had not finished, on this process's
        executor, after a `resumed` event. False when MAX_PHASE_ATTEMPTS are used up (the caller
        fails the task); a hand-back does not count against them, as restarts are no fault of the
        task's. True also when another watchdog took the task over first."""
        runs, settings = self._runs, self._runs.settings
        handed_back = record.heartbeat_at == HANDED_BACK_AT
        if record.attempts >= settings.max_phase_attempts and not handed_back:
            return False
        previous_owner, previous_heartbeat = record.owner, record.heartbeat_at
        phase = record.phase or Phase.analysis
        if phase is Phase.analysis and record.skip_confirmation and record.completed_steps >= 1:
            phase = Phase.delivery  # the analysis was done; this phase had gone on to deliver
        record.phase, record.attempts, record.status = phase, record.attempts + 1, TaskStatus.queued
        self._assign(record)
        if not runs.store.take_over(record, previous_owner, previous_heartbeat):
            return True
        runs.streams.make_available(record.task_id, live=True)
        if phase is Phase.analysis and runs.analysis_round_finished(record.task_id):
            agent = "the confirmation (the ProductManager's analysis was finished)"
        elif phase is Phase.analysis:
            agent = ROSTER.analyst.name
        elif record.completed_steps < ROSTER.total_steps:
            agent = ROSTER.agents[record.completed_steps].name
        else:
            agent = "the final review (every document was written)"
        runs.streams.complete_archive(record.task_id)  # what the lost process wrote but had not stored
        self._restore_lost_step_ends(record)
        runs.streams.publish(
            record.task_id,
            SYSTEM_AGENT,
            EventType.resumed.value,
            f"{lost}; {agent} starts again (attempt {record.attempts}). Finished work is kept."
            if handed_back
            else f"{lost} was lost while running this task; {agent} starts again "
            f"(attempt {record.attempts} of {settings.max_phase_attempts}). Finished work is kept.",
            {
                "lost": lost,
                "agent": agent,
                "attempt": record.attempts,
                "max_attempts": settings.max_phase_attempts,
                "handed_back": handed_back,
            },
        )
        self._hold(record)
        self._executor.dispatch(record.task_id, phase, record.attempts, record.priority)
        return True

    def cancel(self, task_id: str, reason: str = "Cancelled by user") -> TaskRecord:
        runs = self._runs
        run = runs.get(task_id)
        if run is not None:
            with run.lock:
                if not run.record.status.finished:
                    runs.end_run(run, Ending.cancelled(reason))
        else:
            for _ in range(3):  # a watchdog may resume the task (attempt + 1) between our read and write
                r = runs.store.get(task_id)
                if r.status.finished or runs.end_idle_task(r, Ending.cancelled(reason)):
                    break
        r = runs.store.get(task_id)
        if r.status is not TaskStatus.cancelled:
            raise TaskStateConflictError(
                f"Task {task_id} already {r.status.value}; only queued, running or waiting tasks can be cancelled."
            )
        return r

    def _restore_lost_step_ends(self, record: TaskRecord) -> None:
        """An agent's checkpoint (the record, with its document) is saved just before its
        `output` and `step_end` events are published; a process lost in between leaves an agent
        the record counts as finished but the log does not. Publish those two events from the
        record (marked restored), so the log shows each finished agent's work exactly once."""
        runs = self._runs
        finished_in_log = {
            e.agent_name for e in runs.streams.events(record.task_id) if e.event_type == EventType.step_end.value
        }
        for step, spec in enumerate(ROSTER.agents[: record.completed_steps], start=1):
            document = record.deliverables.get(spec.deliverable)
            if spec.name in finished_in_log or not document:
                continue
            restored = {"restored": True}
            runs.streams.publish(record.task_id, spec.name, EventType.output.value, document, restored)
            runs.streams.publish(
                record.task_id,
                spec.name,
                EventType.step_end.value,
                f"{spec.name} finished step {step}/{record.total_steps}",
                {
                    "completed_steps": step,
                    "total_steps": record.total_steps,
                    "usage": agent_usage(record, spec.name),
                    **restored,
                },
            )

    def _assign(self, record: TaskRecord) -> None:
        """Who owns a phase about to be dispatched: this process (a local executor, which holds
        it from now on, so the store must say so for its lease to be renewed), or nobody until a
        Celery worker claims it (store.claim_phase)."""
        # heartbeat_at is the dispatch time until a worker claims the phase: a phase nobody takes
        # up (its message lost) is dispatched again after TASK_TIMEOUT_S (Watchdog.reap_lost).
        record.owner, record.heartbeat_at = (self._runs.instance_id if self._executor.local else None), time.time()

    def _hold(self, record: TaskRecord) -> Run | None:
        """Local executors hold queued tasks as runs here, so cancelling one needs no worker."""
        return self._runs.hold(record) if self._executor.local else None


_ASKED = EventType.awaiting_confirmation.value


class _Part(NamedTuple):
    """A part a request needs, as an error names it: what it is, and what operators check."""

    name: str
    settings: str


def _not_waiting(r: TaskRecord) -> TaskStateConflictError:
    return TaskStateConflictError(
        f"Task {r.task_id} is {r.status.value}; it can be confirmed only while "
        "awaiting_confirmation (wait for the awaiting_confirmation event)."
    )
