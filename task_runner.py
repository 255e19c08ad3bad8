"""The task lifecycle: queue, run, pause for confirmation, revise, cancel, time out, finish.

A run has two phases, each dispatched to an executor (this process's thread pool, or Celery
workers): the ProductManager's analysis (repeated on each revision round) and the delivery crew
(QA, Developer, Coordinator). A task awaiting confirmation lives only in the store, so any
process can confirm or cancel it, also after a restart.

Who wins a race is decided by the store: every change of state is a conditional update
(`transition`, `save_unless_finished`), and a terminal event is published only by the caller
whose update won. Within one process, a phase's changes also happen under its run's lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from agents_config import detect_language
from crew_factory import SYSTEM_AGENT, CrewEventsHandler, LLMFactory, run_analysis, run_delivery
from deliverables import review_with_matrix, trace
from executors import CeleryExecutor, Executor, Phase, ThreadExecutor
from failure_messages import describe_failure
from errors import InvalidRequestError, StreamClosedError, TaskNotFoundError, TaskStateConflictError
from models import EventType, TaskStatus
from settings import EventBackendKind, ExecutorKind, Settings, instance_id
from stream_manager import StreamManager
from task_store import StoredEvent, TaskRecord, TaskStore

log = logging.getLogger(__name__)
INTERRUPTED = "Interrupted by server restart: the task was running or waiting when the server stopped. Submit it again."
SHUT_DOWN = "Interrupted: the server was shut down while the task ran. Submit it again."
WORKER_LOST = ("The worker running this task was lost: no heartbeat from {owner} for over {lease:g} s "
               "(killed, crashed or cut off). Submit the task again.")


_PROGRESS_EVENTS = frozenset({EventType.agent_start.value, EventType.step_end.value})


class TaskAborted(BaseException):
    """Raised on the agent thread at the next event once the task was cancelled or timed out.
    A BaseException, so CrewAI's `except Exception` retry paths do not swallow it."""


@dataclass
class _Run:
    record: TaskRecord
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: threading.Event = field(default_factory=threading.Event)
    active_since: float | None = None  # start of the current running phase
    active_before: float = 0.0  # running seconds of earlier phases

    def active_seconds(self, now: float) -> float:
        return self.active_before + (now - self.active_since if self.active_since else 0.0)

    def pause_clock(self, now: float) -> None:
        self.active_before = self.active_seconds(now)
        self.active_since = None


class TaskRunner:
    def __init__(self, settings: Settings, store: TaskStore, streams: StreamManager,
                 llm_factory: LLMFactory, model_label: str,
                 handler_class: type[CrewEventsHandler] = CrewEventsHandler,
                 executor: Executor | None = None) -> None:
        self._settings = settings
        self._store = store
        self._streams = streams
        self._llm_factory = llm_factory
        self._model_label = model_label
        self._handler_class = handler_class
        self.instance_id = instance_id(settings)
        self._executor = executor or ThreadExecutor(settings.max_concurrent_tasks, self.run_phase)
        self._runs: dict[str, _Run] = {}  # tasks with a phase queued or running in this process
        self._busy = 0
        self._busy_lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, store: TaskStore, streams: StreamManager,
                     llm_factory: LLMFactory, model_label: str) -> TaskRunner:
        runner = cls(settings, store, streams, llm_factory, model_label)
        if settings.executor is ExecutorKind.celery:
            runner._executor.shutdown()
            runner._executor = CeleryExecutor(settings)
        return runner

    # -- queries ------------------------------------------------------------------------------

    def record(self, task_id: str) -> TaskRecord:
        run = self._runs.get(task_id)
        return run.record if run is not None else self._store.get(task_id)

    def live_records(self) -> dict[str, TaskRecord]:
        return {task_id: run.record for task_id, run in list(self._runs.items())}

    @property
    def busy_workers(self) -> int:
        return self._busy

    # -- commands (API threads) ---------------------------------------------------------------

    def submit(self, requirement: str, skip_confirmation: bool) -> TaskRecord:
        record = TaskRecord(task_id=str(uuid.uuid4()), requirement=requirement,
                            skip_confirmation=skip_confirmation, language=detect_language(requirement))
        self._store.save(record)
        self._streams.open(record.task_id)
        self._dispatch(record, Phase.analysis)
        return record

    def confirm(self, task_id: str, approved: bool, feedback: str | None) -> TaskRecord:
        r = self._store.get(task_id)
        if r.status is not TaskStatus.awaiting_confirmation:
            raise self._not_waiting(r)
        if not approved and not feedback:
            raise InvalidRequestError(
                "To request changes, say what to change in `feedback`; to stop the task, "
                f"POST /api/task/{task_id}/cancel.")
        if not approved and len(r.feedback) >= self._settings.max_revision_rounds:
            raise TaskStateConflictError(
                f"The ProductManager has already revised {len(r.feedback)} times "
                f"(MAX_REVISION_ROUNDS={self._settings.max_revision_rounds}); approve the "
                "analysis or cancel the task.")
        r.status, r.confirm_deadline = TaskStatus.running, None
        if not approved:
            r.feedback.append(feedback or "")
        if not self._store.transition(r, TaskStatus.awaiting_confirmation):
            raise self._not_waiting(self._store.get(task_id))  # someone answered or cancelled first
        run = self._track(r)
        content = "Approved" if approved else f"Changes requested: {feedback}"
        try:
            self._streams.publish(task_id, "User", EventType.confirmed.value, content,
                                  {"approved": approved, "feedback": feedback,
                                   "revision_round": len(r.feedback)})
        except StreamClosedError:  # cancelled between our update and this event
            self._runs.pop(task_id, None)
            raise self._not_waiting(self._store.get(task_id)) from None
        self._dispatch(r, Phase.delivery if approved else Phase.analysis, run)
        return r

    @staticmethod
    def _not_waiting(r: TaskRecord) -> TaskStateConflictError:
        return TaskStateConflictError(
            f"Task {r.task_id} is {r.status.value}; it can be confirmed only while "
            "awaiting_confirmation (wait for the awaiting_confirmation event).")

    def cancel(self, task_id: str, reason: str = "Cancelled by user") -> TaskRecord:
        run = self._runs.get(task_id)
        if run is not None:
            with run.lock:
                if not run.record.status.finished:
                    self._finish(run, TaskStatus.cancelled, EventType.cancelled, reason)
        else:
            r = self._store.get(task_id)
            if not r.status.finished:
                self._end_elsewhere(r, TaskStatus.cancelled, EventType.cancelled, reason)
        r = self._store.get(task_id)
        if r.status is not TaskStatus.cancelled:
            raise TaskStateConflictError(f"Task {task_id} already {r.status.value}; only "
                                         "queued, running or waiting tasks can be cancelled.")
        return r

    # -- watchdogs (the maintenance loop) ------------------------------------------------------

    def check_deadlines(self, now: float | None = None) -> None:
        """Fail phases that ran too long; cancel tasks nobody confirmed in time."""
        now = time.time() if now is None else now
        s = self._settings
        for run in list(self._runs.values()):
            with run.lock:
                if run.record.status is TaskStatus.running and run.active_seconds(now) > s.task_timeout_s:
                    message = (f"The task ran longer than TASK_TIMEOUT_S={s.task_timeout_s:g}s and was "
                               "stopped; raise TASK_TIMEOUT_S for larger requirements.")
                    self._finish(run, TaskStatus.failed, EventType.error, message, error=message)
        for r in self._store.expired_confirmations(now):
            self._end_elsewhere(r, TaskStatus.cancelled, EventType.cancelled,
                                f"No confirmation within CONFIRMATION_TIMEOUT_S={s.confirmation_timeout_s:g}s; "
                                "the task was cancelled.")

    def recover_interrupted(self) -> list[str]:
        """At start-up: phases an earlier run of this instance left queued or running are dead
        (with the memory event backend there is only one process, so all such phases are).
        Tasks awaiting confirmation live in the store and go on."""
        single_process = self._settings.event_backend is EventBackendKind.memory
        return [r.task_id for r in self._store.unfinished()
                if (r.owner == self.instance_id or single_process)
                and r.status is not TaskStatus.awaiting_confirmation and r.task_id not in self._runs
                and self._end_elsewhere(r, TaskStatus.failed, EventType.error, INTERRUPTED)]

    def heartbeat(self) -> None:
        now = time.time()
        runs = list(self._runs.values())
        for run in runs:  # a later save of the record must not write an older heartbeat back
            run.record.heartbeat_at = now
        self._store.heartbeat(self.instance_id, [run.record.task_id for run in runs], now)

    def reap_lost(self, now: float | None = None) -> list[str]:
        """Fail queued or running phases of other instances whose lease ran out (any instance
        may do it: the store lets exactly one succeed)."""
        now = time.time() if now is None else now
        lease = self._settings.task_lease_s
        return [r.task_id for r in self._store.unfinished()
                if r.status is not TaskStatus.awaiting_confirmation and r.owner is not None
                and r.task_id not in self._runs and (r.heartbeat_at or r.created_at) < now - lease
                and self._end_elsewhere(r, TaskStatus.failed, EventType.error,
                                        WORKER_LOST.format(owner=r.owner, lease=lease))]

    def interrupt_all(self) -> list[str]:
        """On shutdown: end this process's queued and running phases with an `error` event, so
        their viewers learn it now (tasks awaiting confirmation are not running anywhere)."""
        ended = []
        for run in list(self._runs.values()):
            with run.lock:
                if not run.record.status.finished and \
                        self._finish(run, TaskStatus.failed, EventType.error, SHUT_DOWN, error=SHUT_DOWN):
                    ended.append(run.record.task_id)
        return ended

    def shutdown(self) -> None:
        self._executor.shutdown()

    # -- phases (executor threads, here or in a Celery worker) ----------------------------------

    def _track(self, record: TaskRecord) -> _Run | None:
        """Local executors know their queued tasks, so cancelling one needs no worker."""
        if not self._executor.local:
            return None
        record.owner, record.heartbeat_at = self.instance_id, time.time()
        run = _Run(record, active_before=record.run_seconds)
        self._runs[record.task_id] = run
        return run

    def _dispatch(self, record: TaskRecord, phase: Phase, run: _Run | None = None) -> None:
        if run is None:
            self._track(record)
        self._executor.dispatch(record.task_id, phase)

    def run_phase(self, task_id: str, phase: Phase) -> None:
        run = self._runs.get(task_id)
        if run is None:  # a Celery worker, or a task confirmed by another process
            record = self._store.get(task_id)
            if record.status.finished:
                return
            record.owner, record.heartbeat_at = self.instance_id, time.time()
            run = self._runs[task_id] = _Run(record, active_before=record.run_seconds)
        if not self._streams.holds(task_id):
            self._streams.load(task_id)  # a shared backend: see events other processes publish
        with self._busy_lock:
            self._busy += 1
        try:
            (self._analysis_phase if phase is Phase.analysis else self._delivery_phase)(run)
        except TaskAborted:
            pass  # cancelled or timed out: the terminal event is already out
        except BaseException as exc:  # noqa: BLE001 - any failure must end the stream
            log.exception("task %s failed", task_id)
            with run.lock:
                if not run.record.status.finished:
                    message = describe_failure(exc, self._model_label)
                    self._finish(run, TaskStatus.failed, EventType.error, message, error=message,
                                 agent=run.record.current_agent or SYSTEM_AGENT)
        finally:
            with self._busy_lock:
                self._busy -= 1
            # A phase ends waiting, finished or aborted: either way this process no longer
            # runs the task (unless a confirm here has already queued its next phase).
            if self._runs.get(task_id) is run:
                del self._runs[task_id]

    def _publisher(self, run: _Run) -> Callable[[str, str, str, "dict[str, Any] | None"], None]:
        streams, store, record, aborted = self._streams, self._store, run.record, run.aborted
        task_id = record.task_id

        def publish(agent: str, event_type: str, content: str, metadata: dict[str, Any] | None) -> None:
            # Ended here (aborted) or by another process (the stream closed): stop the crew.
            if aborted.is_set() or streams.is_closed(task_id):
                raise TaskAborted()
            if event_type in _PROGRESS_EVENTS and not store.save_unless_finished(record):
                raise TaskAborted()  # progress (agent, steps, documents) for every process's status
            try:
                streams.publish(task_id, agent, event_type, content, metadata)
            except StreamClosedError:
                raise TaskAborted() from None
        return publish

    def _begin_phase(self, run: _Run) -> None:
        with run.lock:
            r = run.record
            if r.status.finished:
                raise TaskAborted()
            first = r.started_at is None
            r.status = TaskStatus.running
            run.active_since = time.time()
            if first:
                r.started_at = run.active_since
            if not self._store.save_unless_finished(r):
                raise TaskAborted()  # cancelled while it was queued
            if first:
                self._streams.publish(r.task_id, SYSTEM_AGENT, EventType.start.value,
                                      f"Task started with {self._model_label}",
                                      {"model": self._model_label, "language": r.language,
                                       "total_steps": r.total_steps,
                                       "skip_confirmation": r.skip_confirmation})

    def _analysis_phase(self, run: _Run) -> None:
        self._begin_phase(run)
        r = run.record
        analysis = run_analysis(r, self._handler_class(r, self._publisher(run)), self._llm_factory)
        if r.skip_confirmation:
            self._deliver(run)
            return
        with run.lock:
            if r.status.finished:
                return
            now = time.time()
            run.pause_clock(now)
            r.run_seconds = run.active_before
            r.status, r.current_agent = TaskStatus.awaiting_confirmation, None
            r.confirm_deadline = now + self._settings.confirmation_timeout_s
            if not self._store.transition(r, TaskStatus.running):
                raise TaskAborted()  # ended by another process meanwhile
            rounds_left = self._settings.max_revision_rounds - len(r.feedback)
            self._streams.publish(r.task_id, "ProductManager", EventType.awaiting_confirmation.value,
                                  _confirmation_prompt(r.task_id, analysis, rounds_left),
                                  {"confirm_url": f"/api/task/{r.task_id}/confirm",
                                   "revision_rounds_left": rounds_left,
                                   "timeout_s": self._settings.confirmation_timeout_s})

    def _delivery_phase(self, run: _Run) -> None:
        self._begin_phase(run)
        self._deliver(run)

    def _deliver(self, run: _Run) -> None:
        r = run.record
        run_delivery(r, self._handler_class(r, self._publisher(run)), self._llm_factory)
        traced = trace(r.deliverables.get("requirements_analysis", ""), r.deliverables.get("test_plan", ""),
                       r.deliverables.get("technical_design", ""))
        with run.lock:
            if r.status.finished:
                return
            r.traceability = traced
            r.deliverables["delivery_review"] = review_with_matrix(
                r.deliverables.get("delivery_review", ""), traced, r.language)
            self._finish(run, TaskStatus.succeeded, EventType.end,
                         f"Delivery package complete. Verdict: {traced['verdict']} ({traced['reason']})",
                         metadata={"deliverables": sorted(r.deliverables), "verdict": traced["verdict"],
                                   "gaps": traced["gaps"]})

    # -- the ways a run ends --------------------------------------------------------------------

    def _finish(self, run: _Run, status: TaskStatus, event_type: EventType, content: str,
                error: str | None = None, agent: str = SYSTEM_AGENT,
                metadata: dict[str, Any] | None = None) -> bool:
        """End a run of this process (caller holds run.lock); False if another process had."""
        r = run.record
        now = time.time()
        run.aborted.set()
        run.pause_clock(now)
        r.status, r.finished_at, r.error, r.run_seconds = status, now, error, run.active_before
        if status is TaskStatus.succeeded:
            r.current_agent = None
        self._runs.pop(r.task_id, None)
        if not self._store.save_unless_finished(r):
            return False
        self._publish_terminal(r.task_id, agent, event_type, content, metadata, now)
        return True

    def _end_elsewhere(self, r: TaskRecord, status: TaskStatus, event_type: EventType, content: str) -> bool:
        """End a task this process is not running (waiting, queued in Celery, or lost)."""
        now = time.time()
        r.status, r.finished_at = status, now
        r.error = content if status is TaskStatus.failed else None
        if not self._store.save_unless_finished(r):
            return False
        self._publish_terminal(r.task_id, SYSTEM_AGENT, event_type, content, None, now)
        if status is TaskStatus.failed:
            log.warning("task %s failed: %s", r.task_id, content)
        return True

    def _publish_terminal(self, task_id: str, agent: str, event_type: EventType, content: str,
                          metadata: dict[str, Any] | None, now: float) -> None:
        if not self._streams.holds(task_id):
            self._streams.load(task_id)
        try:
            self._streams.publish(task_id, agent, event_type.value, content, metadata)
        except StreamClosedError:  # the store decided first, so this cannot race; kept as a guard
            log.error("task %s already had a terminal event", task_id)
        except TaskNotFoundError:  # the stream died with its process: the log gets it directly
            last = self._store.last_sequence(task_id)
            self._store.append_events([StoredEvent(task_id, last + 1, agent, event_type.value,
                                                   content, now, metadata)])


def _confirmation_prompt(task_id: str, analysis: str, rounds_left: int) -> str:
    changes = (f'or request changes ({rounds_left} revision round(s) left):\n'
               f'  {{"approved": false, "feedback": "what to change"}}\n' if rounds_left > 0 else
               "(no revision rounds left: approve or cancel)\n")
    return (f"{analysis}\n\n---\nThe ProductManager's analysis awaits your confirmation.\n"
            f"POST /api/task/{task_id}/confirm with\n  {{\"approved\": true}}\n{changes}"
            f"or POST /api/task/{task_id}/cancel to stop.")
