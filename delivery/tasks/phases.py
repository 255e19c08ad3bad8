"""Running a task's phases on executor threads (this process's pool, or a Celery worker):
the analysis (again on each revision round), then the delivery crew. The race rules are in
runs.py; the crews themselves are built in crew_factory.py."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from crew_factory import CrewEventsHandler, Publish, run_analysis, run_delivery
from delivery.crew.checks import DocumentChecks
from delivery.crew.compat import stream_sink
from delivery.crew.roster import ROSTER
from delivery.documents.structure import REVIEW
from delivery.documents.traceability import review_with_matrix, trace
from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import SYSTEM_AGENT, EventType, carriable, carriable_metadata, format_timestamp
from delivery.llm.failures import describe_failure
from delivery.llm.providers import LLMFactory
from delivery.llm.usage import BudgetExceeded, UsageMeter, UsagePolicy
from delivery.observability import metrics, tracing
from delivery.observability.logs import log_context
from delivery.tasks.records import DocumentVersion, Phase, TaskStatus
from delivery.tasks.runs import Ending, Run, Runs, TaskAborted
from delivery.webhooks.outbox import Notification

log = logging.getLogger(__name__)

# Events that also save the record, so every process's status shows the progress.
STEP_END = EventType.step_end.value
_PROGRESS_EVENTS = frozenset({EventType.agent_start.value, STEP_END})


class PhaseNotStartedError(Exception):
    """A phase could not be taken up (the store or Redis unreachable) before anything ran."""


class ProcessStoppingError(Exception):
    """A phase arrived after this process began to stop (Runtime.hand_back)."""


class PhaseRunner:
    def __init__(
        self,
        runs: Runs,
        llm_factory: LLMFactory,
        handler_class: type[CrewEventsHandler],
        model_label: str,
        usage_policy: UsagePolicy,
    ) -> None:
        self._runs = runs
        self._llm_factory = llm_factory
        self._handler_class = handler_class
        self._model_label = model_label
        self._usage_policy = usage_policy
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._take_up_lock = threading.Lock()
        self._executor_local = True  # set by the Runtime: False when phases come from Celery

    def hand_back(self, grace_s: float) -> list[str]:
        """Stop this process's work so that no task is lost (its process is stopping): no phase
        starts here any more, running crews stop at their next event, and every queued or running
        phase this process owns is marked handed back in the store. The next process (this one
        restarted, or any other replica or worker) resumes each from its first unfinished agent
        at once, as after a crash but without waiting out the lease or using up an attempt;
        viewers see `resumed` and the sequence goes on. Returns the ids handed back."""
        runs = self._runs
        with self._take_up_lock:  # a phase being taken up now is held once we have the lock
            runs.stopping = True
        for run in runs.all():
            run.aborted.set()
        deadline = time.monotonic() + grace_s
        while any(run.phase_started for run in runs.all()) and time.monotonic() < deadline:
            time.sleep(0.02)
        still = [run.record.task_id for run in runs.all() if run.phase_started]
        if still:  # a model call that streams nothing: its next event stops it (rule 4 in runs.py)
            log.warning("stopping: %d crews did not stop within %g s: %s", len(still), grace_s, still)
        runs.streams.flush()  # what viewers saw is stored before another process resumes
        try:
            handed = runs.store.hand_back(runs.instance_id)
        except Exception:
            log.exception("stopping: the tasks could not be handed back; they resume once their lease runs out")
            return []
        if handed:
            log.warning("stopping: %d tasks handed back for the next process to resume: %s", len(handed), handed)
        return handed

    @property
    def busy(self) -> int:
        """Executor threads of this process running a phase now."""
        return self._busy

    def run(self, task_id: str, phase: Phase, attempt: int | None = None) -> None:
        """Run one phase to its end on the calling thread; every failure ends the task.
        `attempt` (the dispatcher's) drops a message that is stale: the phase moved on since.
        PhaseNotStartedError when the phase could not be taken up (the store or Redis is away): the
        message should go back to the broker (worker.py)."""
        runs = self._runs
        try:
            run = self._take_up(task_id, phase, attempt)
            if run is None:
                return
            if not runs.streams.holds(task_id):
                runs.streams.make_available(task_id, live=True)  # a shared backend: see others' events
        except Exception as exc:
            held = runs.get(task_id)
            if held is not None and not self._executor_local:
                runs.release(held)
            raise PhaseNotStartedError(f"task {task_id}: its {phase.value} phase could not start ({exc})") from exc
        with self._busy_lock:
            self._busy += 1
        meter = run.meter = UsageMeter(run.record, self._usage_policy, on_call=metrics.observe_llm_call)
        started = time.monotonic()
        with tracing.phase_span(run.record, phase, runs.instance_id) as span, log_context(task_id):
            self._run(run, phase, meter)
            tracing.record_ending(span, run.record.status.value, run.record.error or "")
        metrics.PHASE_SECONDS.labels(phase.value).observe(time.monotonic() - started)

    def _take_up(self, task_id: str, phase: Phase, attempt: int | None) -> Run | None:
        """The run this message is for, held here; None when the message is stale or a
        duplicate of a phase running here."""
        runs = self._runs
        with self._take_up_lock:  # two deliveries of one message at once: one takes it up
            if runs.stopping:  # the message goes back to the broker; a local phase is handed back
                raise ProcessStoppingError("this process is stopping")
            run = runs.get(task_id)
            if run is not None and run.phase_started:
                r = run.record
                if attempt is None or (r.phase, r.attempts) == (phase, attempt):
                    return None  # the same message delivered twice to this process
                run.aborted.set()  # an older attempt still held here: it is over
                runs.release(run)
                run = None
            if run is None:  # a Celery worker, or a task confirmed by another process
                try:
                    record = runs.store.get(task_id)
                except TaskNotFoundError:  # purged, or from another deployment's store: it never will be
                    log.warning("task %s: dropped a message for a task the store does not have", task_id)
                    return None
                stale = attempt is not None and (record.phase, record.attempts) != (phase, attempt)
                if record.status.finished or record.status is TaskStatus.awaiting_confirmation or stale:
                    log.info("task %s: dropped a stale message (%s phase, attempt %s)", task_id, phase.value, attempt)
                    return None
                run = runs.hold(record)
            run.phase_started = True
            return run

    def _run(self, run: Run, phase: Phase, meter: UsageMeter) -> None:
        runs, task_id = self._runs, run.record.task_id
        try:
            # The meter sees every model call of this phase's crews before the handler does, so a
            # budget stops the run before the token that passes it is published.
            with stream_sink(meter):
                if phase is Phase.analysis:
                    self._analysis(run)
                else:
                    self._begin(run)
                    self._deliver(run)
        except TaskAborted:
            pass  # cancelled or timed out: the terminal event is already out
        except BudgetExceeded as exceeded:
            with run.lock:
                if not run.record.status.finished:
                    runs.end_run(run, Ending.failed(str(exceeded), agent=run.record.current_agent or SYSTEM_AGENT))
        except BaseException as exc:
            log.exception("task %s failed", task_id)
            with run.lock:
                if not run.record.status.finished:
                    runs.end_run(
                        run,
                        Ending.failed(
                            describe_failure(exc, self._model_label), agent=run.record.current_agent or SYSTEM_AGENT
                        ),
                    )
        finally:
            meter.close()
            with self._busy_lock:
                self._busy -= 1
            # A phase ends waiting, finished or aborted: either way this process no longer runs
            # the task (unless a confirm here has already queued its next phase).
            runs.release(run)

    def _handler(self, run: Run) -> CrewEventsHandler:
        return self._handler_class(run.record, self._publisher(run))

    def _publisher(self, run: Run) -> Publish:
        """The crew's publish: stops the crew once its task ended (rule 4 in runs.py)."""
        streams, store, record, aborted = self._runs.streams, self._runs.store, run.record, run.aborted
        webhooks = self._runs.webhooks
        task_id = record.task_id
        publish, is_closed, runs = streams.publish, streams.is_closed, self._runs

        def publish_event(agent: str, event_type: str, content: str, metadata: dict[str, Any] | None) -> None:
            if aborted.is_set() or is_closed(task_id):
                raise TaskAborted()
            # What a crew publishes carries model text: the one rule, once (delivery/events.py).
            content = carriable(content)
            if metadata:
                metadata = carriable_metadata(metadata)
            if time.time() > runs.lease_until:  # rule 5: another process may be taking this run over
                log.warning("task %s: this process's lease ran out; its crew stops here", task_id)
                aborted.set()
                raise TaskAborted()
            if event_type in _PROGRESS_EVENTS:
                # A checkpoint: also of the running time, so TASK_TIMEOUT_S counts the work a
                # lost process did (up to here) once the task is resumed elsewhere. Under the
                # run's lock (rule 3): `end_run` changes this same record and saves it under it,
                # and a save of ours that copied its ending would land first and make its own
                # conditional save fail, leaving the task ended without its terminal event.
                with run.lock:
                    if record.status.finished:
                        raise TaskAborted()  # ended here while this event was on its way
                    record.run_seconds = run.active_seconds(time.time())
                    saved = store.save_unless_finished(record)
                if not saved or time.time() > runs.lease_until:
                    raise TaskAborted()  # ended, taken over, or the save outlasted the lease
            try:
                publish(task_id, agent, event_type, content, metadata)
            except StreamClosedError:
                raise TaskAborted() from None
            if event_type == STEP_END and record.webhook_steps:
                webhooks.notify(record, Notification.step_finished, agent=agent, completed_steps=record.completed_steps)

        return publish_event

    def _begin(self, run: Run) -> None:
        with run.lock:
            r = run.record
            if r.status.finished or run.aborted.is_set():
                raise TaskAborted()
            first = r.started_at is None
            r.status = TaskStatus.running
            run.active_since = time.time()
            if first:
                r.started_at = run.active_since
            if not self._runs.store.claim_phase(r):
                raise TaskAborted()  # cancelled while it was queued, or another worker took it
            if first:
                metrics.TASKS_STARTED.inc()
                self._runs.streams.publish(
                    r.task_id,
                    SYSTEM_AGENT,
                    EventType.start.value,
                    f"Task started with {self._model_label}",
                    {
                        "model": self._model_label,
                        "language": r.language,
                        "total_steps": r.total_steps,
                        "skip_confirmation": r.skip_confirmation,
                        "trace_id": tracing.trace_id_of(r.trace_context),
                        "budget": r.budget or None,
                    },
                )
        if first:
            # Viewers see an event once it is stored. Store the first one here, outside the lock,
            # rather than wait for the archiver's turn at the GIL while the crew is being built.
            self._runs.streams.flush()

    def _checks(self, run: Run, handler: CrewEventsHandler, first_reason: str = "first draft") -> DocumentChecks:
        return DocumentChecks(
            run.record, handler, self._runs.settings.max_fix_rounds, self._runs.store.add_version, first_reason
        )

    def _analysis(self, run: Run) -> None:
        self._begin(run)
        r = run.record
        handler = self._handler(run)
        reason = f"revision round {len(r.feedback)}: {r.feedback[-1]}" if r.feedback else "first draft"
        checks = self._checks(run, handler, reason)
        finished = r.deliverables.get(ROSTER.analyst.deliverable)
        if r.attempts > 1 and finished and self._runs.analysis_round_finished(r.task_id):
            analysis = finished  # lost before the pause: pause now
        else:
            analysis = run_analysis(r, handler, self._llm_factory, checks)
        if r.skip_confirmation:
            self._deliver(run)
            return
        settings = self._runs.settings
        with run.lock:
            if r.status.finished:
                return
            now = time.time()
            run.pause_clock(now)
            r.run_seconds = run.active_before
            r.status, r.current_agent = TaskStatus.awaiting_confirmation, None
            r.confirm_deadline = now + settings.confirmation_timeout_s
            if not self._runs.store.transition(r, TaskStatus.running, fenced=True):
                raise TaskAborted()  # ended by another process meanwhile
            rounds_left = settings.max_revision_rounds - len(r.feedback)
            self._runs.streams.publish(
                r.task_id,
                ROSTER.analyst.name,
                EventType.awaiting_confirmation.value,
                confirmation_prompt(r.task_id, analysis, rounds_left),
                {
                    "confirm_url": f"/api/task/{r.task_id}/confirm",
                    "revision_rounds_left": rounds_left,
                    "timeout_s": settings.confirmation_timeout_s,
                    # The version shown now, and the one shown at the previous confirmation (for a diff).
                    "version": checks.results[-1].version if checks.results else None,
                    "previous_version": (checks.results[0].version - 1) if checks.results and r.feedback else None,
                },
            )
            self._runs.webhooks.notify(
                r,
                Notification.awaiting_confirmation,
                confirm_url=f"/api/task/{r.task_id}/confirm",
                revision_rounds_left=rounds_left,
                confirm_deadline=format_timestamp(r.confirm_deadline),
            )

    def _deliver(self, run: Run) -> None:
        r = run.record
        handler = self._handler(run)
        run_delivery(r, handler, self._llm_factory, self._checks(run, handler))
        docs = r.deliverables
        traced = trace(docs)
        with run.lock:
            if r.status.finished:
                return
            r.traceability = traced
            docs[REVIEW] = review_with_matrix(docs.get(REVIEW, ""), traced, r.language)
            self._runs.store.add_version(
                DocumentVersion(
                    task_id=r.task_id,
                    deliverable=REVIEW,
                    agent=SYSTEM_AGENT,
                    created_at=time.time(),
                    reason="the computed traceability matrix and verdict added",
                    gaps=[],
                    content=docs[REVIEW],
                )
            )
            self._runs.end_run(
                run,
                Ending.succeeded(
                    f"Delivery package complete. Verdict: {traced['verdict']} ({traced['reason']})",
                    {
                        "deliverables": sorted(docs),
                        "verdict": traced["verdict"],
                        "gaps": traced["gaps"],
                        "problems": traced["problems"],
                    },
                ),
            )


def confirmation_prompt(task_id: str, analysis: str, rounds_left: int) -> str:
    """The `awaiting_confirmation` event's text: the analysis, then how to answer."""
    changes = (
        f'or request changes ({rounds_left} revision round(s) left):\n'
        f'  {{"approved": false, "feedback": "what to change"}}\n'
        if rounds_left > 0
        else "(no revision rounds left: approve or cancel)\n"
    )
    return (
        f"{analysis}\n\n---\nThe ProductManager's analysis awaits your confirmation.\n"
        f"POST /api/task/{task_id}/confirm with\n  {{\"approved\": true}}\n{changes}"
        f"or POST /api/task/{task_id}/cancel to stop."
    )
