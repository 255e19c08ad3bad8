"""The outbox rows A2A pushes make, on a real SQLite store: one per update and config, whichever
way they are made (the archiver's batches, a config catching up with the log, a batch archived
twice), each update the one a subscriber gets, the config's token and authentication as headers."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator

import pytest
from a2a.types.a2a_pb2 import StreamResponse, TaskPushNotificationConfig
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict

from delivery.api.a2a_push import A2aPushes
from delivery.crew.roster import ROSTER
from delivery.events import Event
from delivery.settings import Settings
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.store import PushConfig, TaskStore

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TASK = "t-push-1"


@pytest.fixture
def store(tmp_path) -> Iterator[TaskStore]:
    s = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    yield s
    s.close()


def _log() -> list[Event]:
    """A whole run's events: start, each agent's start and output, the end; the review finished
    by the crew after its agent's output (as its traceability matrix is added)."""
    events = [Event(TASK, 1, "system", "start", "Started.", 1.0)]
    for spec in ROSTER.agents:
        n = len(events) + 1
        events += [
            Event(TASK, n, spec.name, "agent_start", "", 1.0 + n),
            Event(TASK, n + 1, spec.name, "token", "tok", 1.0 + n),  # no update: not pushed
            Event(TASK, n + 2, spec.name, "output", f"# {spec.deliverable}", 1.0 + n),
        ]
    events.append(Event(TASK, len(events) + 1, "system", "end", "Delivered.", 99.0))
    return events


def _task(store: TaskStore) -> None:
    record = TaskRecord(task_id=TASK, requirement="Build a wiki", skip_confirmation=True, language="en")
    record.status = TaskStatus.succeeded
    record.deliverables = {spec.deliverable: f"# {spec.deliverable}" for spec in ROSTER.agents}
    review = ROSTER.agents[-1].deliverable
    record.deliverables[review] += "\n\n## Traceability matrix"
    store.save(record)


def test_every_update_once_however_the_rows_are_made_with_the_configs_headers(store):
    _task(store)
    log = _log()
    store.append_events(log)
    settings = Settings(_env_file=None, webhook_secret=SECRET, webhook_allow_private=True)
    pushes = A2aPushes(settings, store)
    config = PushConfig(TASK, "c1", "http://127.0.0.1:9/hook", time.time(), "tok", "Bearer", "cred")
    assert store.save_push_config(config, 10)

    pushes.queue(log[:5])  # a first batch, archived before the rest
    pushes.catch_up(config)  # the config catching up with everything stored
    pushes.queue(log[3:])  # the later batches, one of them archived twice
    pushes.queue(log[3:])

    rows = store.webhooks(TASK)
    updates = [ParseDict(json.loads(r.payload), StreamResponse()) for r in rows]
    statuses = [u for u in updates if u.HasField("status_update")]
    artifacts = [u for u in updates if u.HasField("artifact_update")]
    # start, each agent's start and the end; each agent's output and the review again, finished.
    assert len(statuses) == 1 + len(ROSTER.agents) + 1
    assert len(artifacts) == len(ROSTER.agents) + 1
    assert len({r.webhook_id for r in rows}) == len(rows)
    finals = [a for a in artifacts if MessageToDict(a.artifact_update.metadata).get("final")]
    assert [a.artifact_update.artifact.artifact_id for a in finals] == [ROSTER.agents[-1].deliverable]
    assert finals[0].artifact_update.artifact.parts[0].text.endswith("## Traceability matrix")
    assert {r.url for r in rows} == {config.url}
    assert all(r.headers == {"X-A2A-Notification-Token": "tok", "Authorization": "Bearer cred"} for r in rows)
    assert [r.event_type for r in rows] == [
        "a2a.statusUpdate" if u.HasField("status_update") else "a2a.artifactUpdate" for u in updates
    ]


def test_a_task_without_configs_gets_no_rows(store):
    _task(store)
    log = _log()
    store.append_events(log)
    settings = Settings(_env_file=None, webhook_secret=SECRET, webhook_allow_private=True)
    pushes = A2aPushes(settings, store)
    pushes.queue(log)
    assert store.webhooks(TASK) == []


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (TaskPushNotificationConfig(url="ftp://example.com/x"), "must be an http:// or https:// URL"),
        (TaskPushNotificationConfig(url="http://127.0.0.1/x", id="x" * 65), "at most 64 characters"),
        (TaskPushNotificationConfig(url="http://127.0.0.1/x", token="t" * 1025), "at most 1024 characters"),
        (TaskPushNotificationConfig(url="http://127.0.0.1/x", task_id="another"), "leave its taskId out"),
        (TaskPushNotificationConfig(url="http://127.0.0.1/x", token="a\r\nX-Evil: 1"), "printable ASCII only"),
        (TaskPushNotificationConfig(url="http://127.0.0.1/x", token="clé"), "printable ASCII only"),
    ],
)
def test_a_config_is_refused_saying_what_to_fix(given, says):
    settings = Settings(_env_file=None, webhook_secret=SECRET, webhook_allow_private=True)
    with pytest.raises(InvalidParamsError, match=says):
        A2aPushes(settings, None).config_of(given, TASK)  # type: ignore[arg-type]  # refused before any store call
