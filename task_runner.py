"""The task lifecycle: queue, run, pause for confirmation, revise, cancel, time out, finish.

A run has two phases, each a job in a bounded thread pool: the ProductManager's analysis
(repeated on each revision round) and the delivery crew (QA, Developer, Coordinator). Between
them a task awaiting confirmation holds no thread. Every state change of a run happens under
that run's lock, so confirm, cancel and the deadline watchdog racing on one task leave exactly
one outcome, and exactly one terminal event.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from agents_config import detect_language
from crew_factory import SYSTEM_AGENT, CrewEventsHandler, LLMFactory, run_analysis, run_delivery
from deliverables import review_with_matrix, trace
from errors import InvalidRequestError, StreamClosedError, TaskStateConflictError
from models import EventType, TaskStatus
from settings import Settings
from stream_manager import StreamManager
from task_store import StoredEvent, TaskRecord, TaskStore

log = logging.getLogger(__name__)
INTERRUPTED = "Interrupted by server restart: the task was running or waiting when the server stopped. Submit it again."


class TaskAborted(BaseException):
    """Raised on the agent thread at the next event once the task was cancelled or timed out.
    A BaseException, so CrewAI's `except Exception` retry paths do not swallow it."""


def describe_failure(exc: BaseException, model: str) -> str:
    """A message for the `error` event: what went wrong and what the operator can do."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain}
    detail = str(chain[-1]) or type(chain[-1]).__name__
    if names & {"AuthenticationError", "PermissionDeniedError"}:
        hint = "The model provider rejected the API key: check DASHSCOPE_API_KEY or OPENAI_API_KEY."
    elif names & {"APIConnectionError", "ConnectError", "ConnectionRefusedError", "ConnectionError"}:
        hint = ("Could not connect to the model endpoint: check OPENAI_BASE_URL and that the server "
                "is running, or unset the API key to use the bundled local model.")
    elif names & {"APITimeoutError", "TimeoutError", "ReadTimeout"}:
        hint = "The model did not answer in time: raise LLM_TIMEOUT_S or try again."
    elif names & {"NotFoundError"}:
        hint = "The endpoint does not know this model: check LLM_MODEL."
    else:
        hint = "The crew failed unexpectedly; the server log has the traceback."
    return f"{hint} (model {model}: {type(chain[-1]).__name__}: {detail[:500]})"


@dataclass
class _Run:
    record: TaskRecord
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: threading.Event = field(default_factory=threading.Event)
    active_since: float | None = None  # start of the current running phase
    active_before: float = 0.0  # running seconds of earlier phases
    confirm_deadline: float | None = None

    def active_seconds(self, now: float) -> float:
        return self.active_before + (now - self.active_since if self.active_since else 0.0)

    def pause_clock(self, now: float) -> None:
        self.active_before = self.active_seconds(now)
        self.active_since = None


class TaskRunner:
    def __init__(self, settings: Settings, store: TaskStore, streams: StreamManager,
                 llm_factory: LLMFactory, model_label: str,
                 handler_class: type[CrewEventsHandler] = CrewEventsHandler) -> None:
        self._settings = settings
        self._store = store
        self._streams = streams
        self._llm_factory = llm_factory
        self._model_label = model_label
        self._handler_class = handler_class
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_tasks, thread_name_prefix="crew")
        self._runs: dict[str, _Run] = {}  # unfinished tasks of this process
        self._busy = 0
        self._busy_lock = threading.Lock()

    # -- queries ------------------------------------------------------------------------------

    def record(self, task_id: str) -> TaskRecord:
        run = self._runs.get(task_id)
        return run.record if run is not None else self._store.get(task_id)

    def live_records(self) -> dict[str, TaskRecord]:
        return {task_id: run.record for task_id, run in list(self._runs.items())}

    @property
    def busy_workers(self) -> int:
        return self._busy

    # -- commands -----------------------------------------------------------------------------

    def submit(self, requirement: str, skip_confirmation: bool) -> TaskRecord:
        record = TaskRecord(task_id=str(uuid.uuid4()), requirement=requirement,
                            skip_confirmation=skip_confirmation, language=detect_language(requirement))
        run = _Run(record)
        self._store.save(record)
        self._streams.open(record.task_id)
        self._runs[record.task_id] = run
        self._schedule(run, self._analysis_phase)
        return record

    def confirm(self, task_id: str, approved: bool, feedback: str | None) -> TaskRecord:
        run = self._live_or_conflict(task_id, "confirmed")
        with run.lock:
            r = run.record
            if r.status is not TaskStatus.awaiting_confirmation:
                raise TaskStateConflictError(
                    f"Task {task_id} is {r.status.value}; it can be confirmed only while "
                    "awaiting_confirmation (wait for the awaiting_confirmation event).")
            if not approved and not feedback:
                raise InvalidRequestError(
                    "To request changes, say what to change in `feedback`; to stop the task, "
                    f"POST /api/task/{task_id}/cancel.")
            if not approved and len(r.feedback) >= self._settings.max_revision_rounds:
                raise TaskStateConflictError(
                    f"The ProductManager has already revised {len(r.feedback)} times "
                    f"(MAX_REVISION_ROUNDS={self._settings.max_revision_rounds}); approve the "
                    "analysis or cancel the task.")
            r.status = TaskStatus.running
            run.confirm_deadline = None
            content = "Approved" if approved else f"Changes requested: {feedback}"
            self._streams.publish(task_id, "User", EventType.confirmed.value, content,
                                  {"approved": approved, "feedback": feedback,
                                   "revision_round": len(r.feedback) + (0 if approved else 1)})
            if not approved:
                r.feedback.append(feedback or "")
            self._store.save(r)
            self._schedule(run, self._delivery_phase if approved else self._analysis_phase)
        return r

    def _live_or_conflict(self, task_id: str, action: str) -> _Run:
        run = self._runs.get(task_id)
        if run is None:
            record = self._store.get(task_id)  # TaskNotFoundError for unknown ids
            raise TaskStateConflictError(f"Task {task_id} is {record.status.value}; it cannot be "
                                         f"{action} any more.")
        return run

    def cancel(self, task_id: str, reason: str = "Cancelled by user") -> TaskRecord:
        run = self._runs.get(task_id)
        if run is None:
            record = self._store.get(task_id)
            if record.status is TaskStatus.cancelled:
                return record
            raise TaskStateConflictError(f"Task {task_id} already {record.status.value}; only "
                                         "queued, running or waiting tasks can be cancelled.")
        with run.lock:
            status = run.record.status
            if status is TaskStatus.cancelled:
                return run.record
            if status.finished:
                raise TaskStateConflictError(f"Task {task_id} already {status.value}; only "
                                             "queued, running or waiting tasks can be cancelled.")
            self._finish(run, TaskStatus.cancelled, EventType.cancelled, reason)
        return run.record

    def check_deadlines(self, now: float | None = None) -> None:
        """Cancel tasks nobody confirmed in time and fail tasks that ran too long."""
        now = time.time() if now is None else now
        s = self._settings
        for run in list(self._runs.values()):
            with run.lock:
                r = run.record
                if (r.status is TaskStatus.awaiting_confirmation and run.confirm_deadline is not None
                        and now > run.confirm_deadline):
                    self._finish(run, TaskStatus.cancelled, EventType.cancelled,
                                 f"No confirmation within CONFIRMATION_TIMEOUT_S={s.confirmation_timeout_s:g}s; "
                                 "the task was cancelled.")
                elif r.status is TaskStatus.running and run.active_seconds(now) > s.task_timeout_s:
                    message = (f"The task ran longer than TASK_TIMEOUT_S={s.task_timeout_s:g}s and was "
                               "stopped; raise TASK_TIMEOUT_S for larger requirements.")
                    self._finish(run, TaskStatus.failed, EventType.error, message, error=message)

    def recover_interrupted(self) -> list[str]:
        """At start-up: tasks a previous process left unfinished are failed, and their log says so."""
        now = time.time()
        recovered = []
        for record in self._store.unfinished():
            last = self._store.last_sequence(record.task_id)
            self._store.append_events([StoredEvent(record.task_id, last + 1, SYSTEM_AGENT,
                                                   EventType.error.value, INTERRUPTED, now, None)])
            record.status, record.error, record.finished_at = TaskStatus.failed, INTERRUPTED, now
            self._store.save(record)
            recovered.append(record.task_id)
        return recovered

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- phases (worker threads) --------------------------------------------------------------

    def _schedule(self, run: _Run, phase: Callable[[_Run], None]) -> None:
        self._pool.submit(self._work, run, phase)

    def _work(self, run: _Run, phase: Callable[[_Run], None]) -> None:
        with self._busy_lock:
            self._busy += 1
        try:
            phase(run)
        except TaskAborted:
            pass  # cancelled or timed out: the terminal event is already out
        except BaseException as exc:  # noqa: BLE001 - any failure must end the stream
            log.exception("task %s failed", run.record.task_id)
            with run.lock:
                if not run.record.status.finished:
                    message = describe_failure(exc, self._model_label)
                    self._finish(run, TaskStatus.failed, EventType.error, message, error=message,
                                 agent=run.record.current_agent or SYSTEM_AGENT)
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _publisher(self, run: _Run) -> Callable[[str, str, str, "dict[str, Any] | None"], None]:
        streams, task_id, aborted = self._streams, run.record.task_id, run.aborted

        def publish(agent: str, event_type: str, content: str, metadata: dict[str, Any] | None) -> None:
            if aborted.is_set():
                raise TaskAborted()
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
                self._streams.publish(r.task_id, SYSTEM_AGENT, EventType.start.value,
                                      f"Task started with {self._model_label}",
                                      {"model": self._model_label, "language": r.language,
                                       "total_steps": r.total_steps,
                                       "skip_confirmation": r.skip_confirmation})
            self._store.save(r)

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
            run.confirm_deadline = now + self._settings.confirmation_timeout_s
            r.status = TaskStatus.awaiting_confirmation
            r.current_agent = None
            rounds_left = self._settings.max_revision_rounds - len(r.feedback)
            self._streams.publish(r.task_id, "ProductManager", EventType.awaiting_confirmation.value,
                                  _confirmation_prompt(r.task_id, analysis, rounds_left),
                                  {"confirm_url": f"/api/task/{r.task_id}/confirm",
                                   "revision_rounds_left": rounds_left,
                                   "timeout_s": self._settings.confirmation_timeout_s})
            self._store.save(r)

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

    # -- the one way a run ends (caller holds run.lock) ---------------------------------------

    def _finish(self, run: _Run, status: TaskStatus, event_type: EventType, content: str,
                error: str | None = None, agent: str = SYSTEM_AGENT,
                metadata: dict[str, Any] | None = None) -> None:
        r = run.record
        now = time.time()
        run.aborted.set()
        run.pause_clock(now)
        r.status, r.finished_at, r.error = status, now, error
        if status is TaskStatus.succeeded:
            r.current_agent = None
        try:
            self._streams.publish(r.task_id, agent, event_type.value, content, metadata)
        except StreamClosedError:  # cannot happen while the lock is held; kept as a guard
            log.error("task %s already had a terminal event", r.task_id)
        self._store.save(r)
        self._runs.pop(r.task_id, None)


def _confirmation_prompt(task_id: str, analysis: str, rounds_left: int) -> str:
    changes = (f'or request changes ({rounds_left} revision round(s) left):\n'
               f'  {{"approved": false, "feedback": "what to change"}}\n' if rounds_left > 0 else
               "(no revision rounds left: approve or cancel)\n")
    return (f"{analysis}\n\n---\nThe ProductManager's analysis awaits your confirmation.\n"
            f"POST /api/task/{task_id}/confirm with\n  {{\"approved\": true}}\n{changes}"
            f"or POST /api/task/{task_id}/cancel to stop.")
