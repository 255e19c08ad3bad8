"""A2A push notifications on two replicas sharing Redis and PostgreSQL: a config given on one
replica, another created on the other, the task answered there; each config gets every update
once, whichever replica's archiver made its row and whichever replica's sender sent it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from a2a.types.a2a_pb2 import (
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    TaskPushNotificationConfig,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from tests.server.test_a2a import a2a_client
from tests.server.test_a2a_push import (
    SECRET,
    as_update,
    expected_updates,
    last_event,
    settled_pushes,
    update_key,
    user_message,
)
from tests.support.replicas import two_replicas
from tests.support.server_process import Server
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    folder: Path = tmp_path_factory.mktemp("a2a-push-replicas")
    settings = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_RETRY_BASE_S": "0.2"}
    with two_replicas(folder, **settings) as (a, b, _redis):
        yield a, b


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


def test_configs_given_on_either_replica_get_every_update_once(replicas, receiver):
    a, b = replicas

    async def scenario() -> tuple[str, StreamResponse, StreamResponse]:
        async with a2a_client(a.url) as on_a, a2a_client(b.url) as on_b:
            request = SendMessageRequest(
                message=user_message("Build a recipe planner"),
                configuration=SendMessageConfiguration(
                    task_push_notification_config=TaskPushNotificationConfig(url=receiver.url + "/a", token="ta")
                ),
            )
            asked = await last_event(on_a.send_message(request))
            task_id = asked.status_update.task_id
            await on_b.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="b", url=receiver.url + "/b", token="tb")
            )
            done = await last_event(on_b.send_message(SendMessageRequest(message=user_message("approve", task_id))))
            return task_id, asked, done

    task_id, asked, done = asyncio.run(scenario())
    assert done.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    asked_at = int(MessageToDict(asked.status_update.metadata)["sequence"])
    everything = expected_updates(a.url, task_id, after=0)
    after_asking = expected_updates(b.url, task_id, after=asked_at)
    on_a_wanted, on_b_wanted = everything.total(), after_asking.total()
    hooks = settled_pushes(b.url, task_id, on_a_wanted + on_b_wanted)
    assert receiver.refused == 0
    on_a = [r for r in receiver.received if r.path == "/hook/a"]
    on_b = [r for r in receiver.received if r.path == "/hook/b"]
    assert len(on_a) + len(on_b) == len(receiver.received) == len(hooks)
    assert all(h["state"] == "delivered" and len(h["attempts"]) == 1 for h in hooks)
    assert Counter(update_key(as_update(r)) for r in on_a) == everything
    got_on_b = Counter(update_key(as_update(r)) for r in on_b)
    assert not after_asking - got_on_b, "nothing after the config was created may be missing"
    # With Redis an event is shown as soon as it is published and stored a moment later: the
    # question the client saw before creating the config may be stored, and pushed, after it.
    assert set(got_on_b - after_asking) <= {("statusUpdate", asked_at, False)}
    assert max(got_on_b.values()) == 1
    assert {r.headers["x-a2a-notification-token"] for r in on_a} == {"ta"}
    assert {r.headers["x-a2a-notification-token"] for r in on_b} == {"tb"}
