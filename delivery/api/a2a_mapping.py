"""Our task as A2A: its state, its Task, and the updates each of its events makes (the mapping
described in delivery/api/a2a.py). Used by the door's streams and by the pushes
(delivery/api/a2a_push.py), which run in any process, worker too: nothing here needs the runtime.
"""

from __future__ import annotations

from typing import Any

from a2a.server.events.event_queue import Event as A2aEvent
from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.types.a2a_pb2 import TaskStatus as A2aStatus
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from delivery.crew.roster import ROSTER
from delivery.events import Event, EventType
from delivery.tasks.records import TaskRecord, TaskStatus

STATE_OF = {  # our task's status → its A2A state
    TaskStatus.queued: TaskState.TASK_STATE_SUBMITTED,
    TaskStatus.running: TaskState.TASK_STATE_WORKING,
    TaskStatus.awaiting_confirmation: TaskState.TASK_STATE_INPUT_REQUIRED,
    TaskStatus.succeeded: TaskState.TASK_STATE_COMPLETED,
    TaskStatus.failed: TaskState.TASK_STATE_FAILED,
    TaskStatus.cancelled: TaskState.TASK_STATE_CANCELED,
}
STATUS_OF = {state: status for status, state in STATE_OF.items()}
FINAL_STATES = frozenset({TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED})


def final_updates(record: TaskRecord, fold: Fold, update: TaskStatusUpdateEvent) -> list[TaskArtifactUpdateEvent]:
    """A succeeded task's last word, for streams and pushes alike: the verdict (GO/NO-GO) put in
    its final status `update`, and each document the crew finished after its agent's `output`
    (the review gains its traceability matrix), whole, as the artifact it replaces (metadata
    `final`), to send before the update."""
    if update.status.state != TaskState.TASK_STATE_COMPLETED:
        return []
    verdict = verdict_of(record)
    if verdict:
        update.status.message.parts[0].text = verdict
        update.metadata.update(verdict_metadata(record))
    sequence = int(update.metadata["sequence"])
    finals = []
    for key in ROSTER.deliverable_keys:
        document = record.deliverables.get(key)
        sent = fold.artifacts.get(key)
        if document is not None and (sent is None or sent.parts[0].text != document):
            artifact = artifact_of(key, document)
            fold.artifacts[key] = artifact
            metadata = struct_of({"sequence": sequence, "final": True})
            finals.append(
                TaskArtifactUpdateEvent(
                    task_id=fold.task_id,
                    context_id=fold.task_id,
                    artifact=artifact,
                    last_chunk=True,
                    metadata=metadata,
                )
            )
    return finals


class Fold:
    """A task's A2A state built from its events, and the updates each event makes."""

    def __init__(self, record: TaskRecord) -> None:
        self.task_id = record.task_id
        self.state = TaskState.TASK_STATE_SUBMITTED
        self.message: str | None = None
        self.artifacts: dict[str, Artifact] = {}
        self.record = record
        self.sequence = 0  # the last event applied: the updates that follow come after it
        self.answers = 0  # `confirmed` events applied
        self.ts = record.created_at  # the last status change: every subscriber's Task is the same

    def apply(self, event: Event) -> list[A2aEvent]:
        kind = event.event_type
        self.sequence = event.sequence
        if kind == EventType.output.value:
            spec = ROSTER.by_name(event.agent_name)
            if spec is None:
                return []
            artifact = artifact_of(spec.deliverable, event.content)
            self.artifacts[spec.deliverable] = artifact
            return [
                TaskArtifactUpdateEvent(
                    task_id=self.task_id,
                    context_id=self.task_id,
                    artifact=artifact,
                    last_chunk=True,
                    metadata=struct_of({"sequence": event.sequence}),
                )
            ]
        state, text = self.state, None
        if kind == EventType.confirmed.value:
            self.answers += 1
        if kind in (EventType.start.value, EventType.confirmed.value, EventType.resumed.value):
            state, text = TaskState.TASK_STATE_WORKING, event.content or None
        elif kind == EventType.agent_start.value:
            state, text = TaskState.TASK_STATE_WORKING, f"{event.agent_name} is working."
        elif kind == EventType.awaiting_confirmation.value:
            state = TaskState.TASK_STATE_INPUT_REQUIRED
            text = (event.content or "The analysis is ready.") + ' Answer "approve", or say what to change.'
        elif kind == EventType.end.value:
            state, text = TaskState.TASK_STATE_COMPLETED, event.content or "Delivered."
        elif kind == EventType.error.value:
            state, text = TaskState.TASK_STATE_FAILED, event.content
        elif kind == EventType.cancelled.value:
            state, text = TaskState.TASK_STATE_CANCELED, event.content or "Cancelled."
        else:
            return []
        self.state, self.message, self.ts = state, text, event.ts
        return [
            TaskStatusUpdateEvent(
                task_id=self.task_id,
                context_id=self.task_id,
                status=status_of(self.task_id, state, text, event.ts),
                metadata=struct_of({"sequence": event.sequence, "eventType": kind, "agent": event.agent_name}),
            )
        ]

    def task(self) -> Task:
        task = Task(
            id=self.task_id,
            context_id=self.task_id,
            status=status_of(self.task_id, self.state, self.message, self.ts),
            artifacts=list(self.artifacts.values()),
            metadata=struct_of({"sequence": self.sequence}),
        )
        task.history.append(requirement_message(self.record))
        return task


def task_of(r: TaskRecord, history: int | None, include_artifacts: bool = True) -> Task:
    state = STATE_OF[r.status]
    text = r.error if r.status.finished and r.error else verdict_of(r) if r.status is TaskStatus.succeeded else None
    if r.status is TaskStatus.awaiting_confirmation:
        text = 'The analysis is ready. Answer "approve", or say what to change.'
    task = Task(
        id=r.task_id,
        context_id=r.task_id,
        status=status_of(r.task_id, state, text, r.finished_at or r.started_at or r.created_at),
        metadata=struct_of(
            verdict_metadata(r) | {"currentAgent": r.current_agent, "completedSteps": r.completed_steps}
        ),
    )
    if include_artifacts:
        task.artifacts.extend(
            artifact_of(key, r.deliverables[key]) for key in ROSTER.deliverable_keys if key in r.deliverables
        )
    if history != 0:
        task.history.append(requirement_message(r))
    return task


def artifact_of(key: str, markdown: str) -> Artifact:
    spec = ROSTER.author_of(key)
    return Artifact(
        artifact_id=key,
        name=spec.filename,
        description=f"By the {spec.name}",
        parts=[Part(text=markdown, media_type="text/markdown", filename=spec.filename)],
    )


def status_of(task_id: str, state: TaskState, text: str | None, ts: float) -> A2aStatus:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(ts * 1000))
    status = A2aStatus(state=state, timestamp=stamp)
    if text:
        status.message.CopyFrom(
            Message(
                message_id=f"{task_id}:{state}:{int(ts * 1000)}",
                context_id=task_id,
                task_id=task_id,
                role=Role.ROLE_AGENT,
                parts=[Part(text=text)],
            )
        )
    return status


def requirement_message(r: TaskRecord) -> Message:
    return Message(
        message_id=f"{r.task_id}:requirement",
        context_id=r.task_id,
        task_id=r.task_id,
        role=Role.ROLE_USER,
        parts=[Part(text=r.requirement)],
    )


def verdict_of(r: TaskRecord) -> str | None:
    traced = r.traceability or {}
    if not traced.get("verdict"):
        return None
    return f"Verdict: {traced['verdict']} ({traced.get('reason') or 'no reason given'})."


def verdict_metadata(r: TaskRecord) -> dict[str, Any]:
    traced = r.traceability or {}
    return {"verdict": traced.get("verdict"), "verdictReason": traced.get("reason")} if traced.get("verdict") else {}


def struct_of(data: dict[str, Any]) -> Struct:
    return ParseDict({k: v for k, v in data.items() if v is not None}, Struct())


def json_of(struct: Struct) -> dict[str, Any]:
    return MessageToDict(struct)
