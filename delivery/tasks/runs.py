"""The runs this process holds, and the two ways a task ends: the rules every part of the
lifecycle (commands.py, phases.py, watchdog.py) follows.

A task runs in phases (records.Phase), each dispatched to an executor: this process's thread pool
or a Celery worker. A *run* is this process's handle on a task with a phase queued or running
here: its record, a lock and an abort flag. A task awaiting confirmation has no run anywhere; it
lives in the store, so any process can confirm or cancel it, also after a restart.

The race rules, written once:

1. **The store decides.** Every change of a task's state is a conditional update:
   `transition(record, expected_status)` (confirm; pausing for confirmation) or
   `save_unless_finished(record)` (starting a phase, progress, every ending). Whoever's update
   wins publishes the event that goes with it; a loser publishes nothing and backs off (a phase
   raises TaskAborted, a command answers 409). So confirm racing cancel, a timeout racing the end
   of a crew, or two reapers racing each other leave one outcome and one event.
2. **One terminal event.** Every ending goes through `Runs.end_run` (a run held here: its crew is
   stopped at its next event), `Runs.end_idle_task` (a task no phase of which runs here:
   awaiting confirmation, queued in Celery, or lost with its owner) or `Runs.end_unstarted` (a
   submission that failed half-way: no phase ever ran). Each publishes the terminal event only
   after winning `save_unless_finished`.
3. **One run, one writer.** Within this process every change and save of a held run's record
   happens under its `lock` (the crew's own checkpoints too), so the watchdog, a command and the
   phase itself never interleave their read-modify-write: a save that copied another's half-made
   ending and landed first would leave the task ended without its terminal event.
4. **A crew learns it was ended** at its next event: the run's `aborted` flag (ended here) or its
   closed stream (ended by another process) makes the publish raise TaskAborted, a BaseException
   so that CrewAI's `except Exception` retry paths do not swallow it.
5. **A lost process is fenced off.** When a process's lease runs out (TASK_LEASE_S without a
   heartbeat), any other takes its phases over and resumes them as the next attempt. Should the
   "lost" process still live (cut off from the database, paused), it can no longer write: every
   save is conditional on the record's attempt (`save_unless_finished`), its crews stop at
   their next event once its own lease would have run out (`Runs.lease_until`, a fifth of the
   lease before the others may reap), and its next heartbeat tells it which runs were taken.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from delivery.crew.roster import ROSTER
from delivery.events import SYSTEM_AGENT, EventType
from delivery.llm.usage import UsageMeter, summary
from delivery.observability import metrics
from delivery.settings import EventBackendKind, Settings
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.store import TaskStore
from delivery.webhooks.outbox import Notification, Webhooks
from stream_manager import StreamManager

log = logging.getLogger(__name__)


class TaskAborted(BaseException):
    """Raised on the agent thread at its next event once the task was ended (rule 4)."""


@dataclass
class Run:
    record: TaskRecord
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: threading.Event = field(default_factory=threading.Event)
    meter: UsageMeter | None = None  # counting the running phase's model calls
    active_since: float | None = None  # start of the current running phase
    active_before: float = 0.0  # running seconds of earlier phases
    phase_started: bool = False  # a phase of this run has begun on an executor thread here

    def active_seconds(self, now: float) -> float:
        return self.active_before + (now - self.active_since if self.active_since else 0.0)

    def pause_clock(self, now: float) -> None:
        self.active_before = self.active_seconds(now)
        self.active_since = None


@dataclass(frozen=True)
class Ending:
    """How a task ends: its final status and the terminal event that says so."""

    status: TaskStatus
    event_type: EventType
    content: str
    agent: str = SYSTEM_AGENT
    metadata: dict[str, Any] | None = None

    @classmethod
    def succeeded(cls, content: str, metadata: dict[str, Any]) -> Ending:
        return cls(TaskStatus.succeeded, EventType.end, content, metadata=metadata)

    @classmethod
    def failed(cls, message: str, agent: str = SYSTEM_AGENT) -> Ending:
        return cls(TaskStatus.failed, EventType.error, message, agent)

    @classmethod
    def cancelled(cls, reason: str) -> Ending:
        return cls(TaskStatus.cancelled, EventType.cancelled, reason)

    @property
    def error(self) -> str | None:
        """What the record's `error` says: the message of a failure, nothing otherwise."""
        return self.content if self.status is TaskStatus.failed else None


class Runs:
    """The runs of this process, and what the lifecycle units share: settings, store, streams."""

    def __init__(
        self, settings: Settings, store: TaskStore, streams: StreamManager, instance_id: str, webhooks: Webhooks
    ) -> None:
        self.settings = settings
        self.store = store
        self.streams = streams
        self.webhooks = webhooks
        self.instance_id = instance_id
        self._runs: dict[str, Run] = {}
        # Until when this process may be sure no other one has taken its runs over (rule 5).
        self.lease_until = math.inf
        # Set as the process stops (Runtime.hand_back): no phase starts here any more.
        self.stopping = False

    def renewed_lease(self, renewed_at: float) -> None:
        """The store renewed this process's leases as of `renewed_at` (the watchdog's heartbeat).
        Only where several processes share the store can one take over another's runs."""
        if self.settings.event_backend is EventBackendKind.redis:
            self.lease_until = renewed_at + 0.8 * self.settings.task_lease_s

    # -- queries --------------------------------------------------------------------------------

    def get(self, task_id: str) -> Run | None:
        return self._runs.get(task_id)

    def all(self) -> list[Run]:
        return list(self._runs.values())

    def record(self, task_id: str) -> TaskRecord:
        """The freshest record: held here, else stored (TaskNotFoundError for unknown ids)."""
        run = self._runs.get(task_id)
        return run.record if run is not None else self.store.get(task_id)

    def analysis_round_finished(self, task_id: str) -> bool:
        """The ProductManager finished the current round's analysis (its `step_end` came after
        the last confirmation): a resumed analysis phase then only pauses for confirmation."""
        analyst = ROSTER.analyst.name
        for event in reversed(self.streams.events(task_id)):
            if event.event_type == EventType.confirmed.value:
                return False
            if event.event_type == EventType.step_end.value and event.agent_name == analyst:
                return True
        return False

    def live_records(self) -> dict[str, TaskRecord]:
        return {task_id: run.record for task_id, run in list(self._runs.items())}

    # -- holding ----------------------------------------------------------------------------------

    def hold(self, record: TaskRecord) -> Run:
        """Hold a run for `record` in this process, which becomes its owner."""
        record.owner, record.heartbeat_at = self.instance_id, time.time()
        run = Run(record, active_before=record.run_seconds)
        self._runs[record.task_id] = run
        return run

    def release(self, run: Run) -> None:
        """Forget `run` unless a newer run of the same task replaced it meanwhile."""
        if self._runs.get(run.record.task_id) is run:
            del self._runs[run.record.task_id]

    # -- the two ways a task ends (rule 2) -----------------------------------------------------------

    def end_run(self, run: Run, ending: Ending) -> bool:
        """End a run held here (caller holds run.lock): its crew stops at its next event.
        False when another process had ended the task first."""
        r = run.record
        now = time.time()
        run.aborted.set()
        if run.meter is not None:  # a call cut short by this ending still counts
            run.meter.close()
        run.pause_clock(now)
        r.status, r.finished_at, r.error, r.run_seconds = ending.status, now, ending.error, run.active_before
        if ending.status is TaskStatus.succeeded:
            r.current_agent = None
        self._runs.pop(r.task_id, None)
        if not self.store.save_unless_finished(r):
            return False
        metrics.observe_ending(ending.status, r.run_seconds)
        self._publish_terminal(r, ending)
        return True

    def end_idle_task(self, record: TaskRecord, ending: Ending) -> bool:
        """End a task no phase of which runs here. False when someone had ended it first."""
        record.status, record.finished_at, record.error = ending.status, time.time(), ending.error
        if not self.store.save_unless_finished(record):
            return False
        metrics.observe_ending(ending.status, record.run_seconds)
        self.streams.complete_archive(record.task_id)  # a lost process's last events, if any
        self._publish_terminal(record, ending)
        if ending.status is TaskStatus.failed:
            log.warning("task %s failed: %s", record.task_id, ending.content)
        return True

    def end_unstarted(self, record: TaskRecord, reason: str) -> bool:
        """End a task whose submission failed half-way (its log could not be opened, or its first
        phase not sent to the executor), so that nothing runs it later. Its client was answered
        503 and never given its id: an `error` event ends its log, but no webhook is sent. A log
        that could not be opened (Redis failed) gets that event from the record when it is first
        read, or from the watchdog's `repair_endings`: nothing here waits on Redis again. False
        when something had ended the task first."""
        ending = Ending.failed(reason)
        record.status, record.finished_at, record.error = ending.status, time.time(), ending.error
        if not self.store.save_unless_finished(record):
            return False
        metrics.observe_ending(ending.status, record.run_seconds)
        if self.streams.holds(record.task_id):
            self._publish_terminal(record, ending, notify=False)
        log.warning("task %s was not started: %s", record.task_id, reason)
        return True

    def _publish_terminal(self, record: TaskRecord, ending: Ending, notify: bool = True) -> None:
        metadata = {**(ending.metadata or {}), "usage": summary(record.usage)["total"]}
        self.streams.publish_terminal(record.task_id, ending.agent, ending.event_type.value, ending.content, metadata)
        if notify:
            self.webhooks.notify(record, Notification(f"task.{ending.status.value}"))
