"""A2A push notifications with the a2a-sdk client against real servers (scripted provider) and a
real receiver that verifies each body's webhook signature: a config given with SendMessage and
one created while the task asks for input each get every update once, as StreamResponse JSON
with the config's token; configs are read, listed, replaced, deleted and kept across a restart;
bad URLs and unknown tasks are refused with what to do."""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from a2a.types.a2a_pb2 import (
    AuthenticationInfo,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, PushNotificationNotSupportedError, TaskNotFoundError
from google.protobuf.json_format import MessageToDict, ParseDict

from delivery.api.a2a_push import MAX_CONFIGS_PER_TASK
from delivery.crew.roster import ROSTER
from tests.support.a2a_client import a2a_client
from tests.support.api import stream_until
from tests.support.server_process import Server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Received, WebhookReceiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
PUSHING = {"webhook_secret": SECRET, "webhook_allow_private": "true", "webhook_retry_base_s": 0.2}
# The events that make A2A updates, and the kind of update each makes.
UPDATE_OF = {"output": "artifactUpdate"} | dict.fromkeys(
    ("start", "agent_start", "awaiting_confirmation", "confirmed", "resumed", "end", "error", "cancelled"),
    "statusUpdate",
)


@pytest.fixture(scope="module")
def pushing(start_server: Callable[..., Server]) -> Server:
    return start_server(**PUSHING)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


def user_message(text: str, task_id: str = "") -> Message:
    return Message(message_id="m-1", role=Role.ROLE_USER, parts=[Part(text=text)], task_id=task_id)


async def last_event(stream: Any) -> StreamResponse:
    events = [event async for event in stream]
    return events[-1]


def as_update(received: Received) -> StreamResponse:
    """The body as the A2A type it must be (ParseDict refuses any other shape)."""
    return ParseDict(received.body, StreamResponse())


def update_key(update: StreamResponse) -> tuple[str, int, bool]:
    """(its kind, the event it came from, whether it is a completed task's final document)."""
    kind = "statusUpdate" if update.HasField("status_update") else "artifactUpdate"
    metadata = MessageToDict(getattr(update, "status_update" if kind == "statusUpdate" else "artifact_update").metadata)
    return kind, int(metadata["sequence"]), bool(metadata.get("final"))


def expected_updates(url: str, task_id: str, after: int) -> Counter[tuple[str, int, bool]]:
    """The updates the task's log makes after sequence `after`: one per mapped event, and before
    COMPLETED each document the crew finished after its agent's `output`."""
    log = stream_until(url, task_id, "end").events
    expected = Counter(
        (UPDATE_OF[e["event_type"]], e["sequence"], False)
        for e in log
        if e["event_type"] in UPDATE_OF and e["sequence"] > after
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        documents = http.get(f"/api/task/{task_id}/result").json()["deliverables"]
    deliverable_of = {spec.name: spec.deliverable for spec in ROSTER.agents}
    last_output = {deliverable_of[e["agent_name"]]: e["content"] for e in log if e["event_type"] == "output"}
    end = log[-1]["sequence"]
    expected[("artifactUpdate", end, True)] = sum(documents[k] != last_output.get(k) for k in documents)
    return +expected


def settled_pushes(url: str, task_id: str, count: int) -> list[dict[str, Any]]:
    """The task's outbox rows once `count` of them are settled."""

    def settled() -> list[dict[str, Any]] | None:
        with httpx.Client(base_url=url, timeout=30) as http:
            hooks: list[dict[str, Any]] = http.get(f"/api/task/{task_id}/webhooks").json()["webhooks"]
        return hooks if len(hooks) >= count and all(h["state"] != "pending" for h in hooks) else None

    return wait_for(settled, 60, message=f"{count} settled pushes of task {task_id}")


def test_each_config_gets_every_update_after_it_once_signed_with_its_token(pushing: Server, receiver):
    from_message = TaskPushNotificationConfig(url=receiver.url + "/sent", token="tok-sent")
    created = TaskPushNotificationConfig(
        id="ops",
        url=receiver.url + "/created",
        token="tok-created",
        authentication=AuthenticationInfo(scheme="Bearer", credentials="cred-7"),
    )

    async def scenario() -> tuple[str, StreamResponse, StreamResponse, TaskPushNotificationConfig]:
        async with a2a_client(pushing.url) as client:
            request = SendMessageRequest(
                message=user_message("Build a recipe planner"),
                configuration=SendMessageConfiguration(task_push_notification_config=from_message),
            )
            asked = await last_event(client.send_message(request))
            task_id = asked.status_update.task_id
            created.task_id = task_id
            stored = await client.create_task_push_notification_config(created)
            done = await last_event(client.send_message(SendMessageRequest(message=user_message("approve", task_id))))
            return task_id, asked, done, stored

    task_id, asked, done, stored = asyncio.run(scenario())
    assert asked.status_update.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert done.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert (stored.id, stored.task_id, stored.url, stored.token) == ("ops", task_id, created.url, "tok-created")
    asked_at = int(MessageToDict(asked.status_update.metadata)["sequence"])
    everything = expected_updates(pushing.url, task_id, after=0)
    after_asking = expected_updates(pushing.url, task_id, after=asked_at)
    hooks = settled_pushes(pushing.url, task_id, everything.total() + after_asking.total())

    assert len(hooks) == everything.total() + after_asking.total()  # one row per update and config
    assert all(h["state"] == "delivered" and len(h["attempts"]) == 1 for h in hooks)
    assert receiver.refused == 0  # every body carried a valid signature of WEBHOOK_SECRET
    by_path: dict[str, list[Received]] = {}
    for received in receiver.received:
        by_path.setdefault(received.path, []).append(received)
    assert set(by_path) == {"/hook/sent", "/hook/created"}
    sent, later = by_path["/hook/sent"], by_path["/hook/created"]
    # Exactly once each: the config given with the message from the task's first event on, the
    # one created while it asked for input from its next event on.
    assert Counter(update_key(as_update(r)) for r in sent) == everything
    assert Counter(update_key(as_update(r)) for r in later) == after_asking
    assert len({r.headers["webhook-id"] for r in receiver.received}) == len(receiver.received)
    assert {r.headers["x-a2a-notification-token"] for r in sent} == {"tok-sent"}
    assert all("authorization" not in r.headers for r in sent)
    assert {r.headers["x-a2a-notification-token"] for r in later} == {"tok-created"}
    assert {r.headers["authorization"] for r in later} == {"Bearer cred-7"}
    # What a subscriber sees: the states in order, the four documents, the verdict at the end.
    # In the log's order (they are sent in parallel): by event; a completed task's final documents before its status.
    updates = sorted((as_update(r) for r in sent), key=lambda u: (update_key(u)[1], u.HasField("status_update")))
    states = [u.status_update.status.state for u in updates if u.HasField("status_update")]
    assert states[0] == TaskState.TASK_STATE_WORKING and states[-1] == TaskState.TASK_STATE_COMPLETED
    assert TaskState.TASK_STATE_INPUT_REQUIRED in states
    assert {u.status_update.task_id for u in updates if u.HasField("status_update")} == {task_id}
    documents = {u.artifact_update.artifact.artifact_id for u in updates if u.HasField("artifact_update")}
    assert documents == set(ROSTER.deliverable_keys)
    final = updates[-1].status_update
    assert final.status.state == TaskState.TASK_STATE_COMPLETED
    assert final.status.message.parts[0].text.startswith("Verdict: ")
    assert {h["type"] for h in hooks} == {"a2a.statusUpdate", "a2a.artifactUpdate"}


def test_configs_are_read_listed_replaced_deleted_and_refused_with_what_to_do(pushing: Server, receiver):
    async def scenario() -> None:
        async with a2a_client(pushing.url) as client:
            asked = await last_event(
                client.send_message(SendMessageRequest(message=user_message("Build a library app")))
            )
            task_id = asked.status_update.task_id
            one = TaskPushNotificationConfig(task_id=task_id, id="one", url=receiver.url + "/one", token="t1")
            unnamed = TaskPushNotificationConfig(task_id=task_id, url=receiver.url + "/unnamed")
            await client.create_task_push_notification_config(one)
            named_after_task = await client.create_task_push_notification_config(unnamed)
            assert named_after_task.id == task_id  # as the a2a-sdk's stores name an unnamed config

            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert [(c.id, c.url, c.token) for c in listed.configs] == [
                ("one", one.url, "t1"),
                (task_id, unnamed.url, ""),
            ]
            got = await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task_id, id="one")
            )
            assert (got.id, got.task_id, got.url, got.token) == ("one", task_id, one.url, "t1")

            # An id is one config per task: saving it again replaces it.
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="one", url=receiver.url + "/moved")
            )
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert sorted((c.id, c.url) for c in listed.configs) == sorted(
                [("one", receiver.url + "/moved"), (task_id, unnamed.url)]
            )

            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="one")
            )
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert [c.id for c in listed.configs] == [task_id]
            with pytest.raises(TaskNotFoundError, match="has no push config 'one'"):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=task_id, id="one")
                )
            await client.delete_task_push_notification_config(  # again: nothing left to delete, no error
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="one")
            )

            for bad, says in [
                ("ftp://example.com/hook", "must be an http:// or https:// URL"),
                ("https://user:pw@example.com/hook", "must not carry credentials"),
                ("http://no-such-host.invalid/hook", "does not resolve"),
            ]:
                with pytest.raises(InvalidParamsError, match=says):
                    await client.create_task_push_notification_config(
                        TaskPushNotificationConfig(task_id=task_id, url=bad)
                    )
            with pytest.raises(InvalidParamsError, match="needs both scheme and credentials"):
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(
                        task_id=task_id, url=receiver.url, authentication=AuthenticationInfo(scheme="Bearer")
                    )
                )
            # A bad URL in SendMessage's configuration starts no task.
            with pytest.raises(InvalidParamsError, match="Give the public http"):
                await last_event(
                    client.send_message(
                        SendMessageRequest(
                            message=user_message("Build a ghost"),
                            configuration=SendMessageConfiguration(
                                task_push_notification_config=TaskPushNotificationConfig(url="not a url")
                            ),
                        )
                    )
                )

        async with a2a_client(pushing.url, version="0.3") as old_client:  # 0.3 method names, same configs
            await old_client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="old", url=receiver.url + "/old")
            )
            got = await old_client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task_id, id="old")
            )
            assert (got.id, got.url) == ("old", receiver.url + "/old")
        async with a2a_client(pushing.url) as client:
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert sorted(c.id for c in listed.configs) == sorted([task_id, "old"])
            unknown = "no-such-task"
            with pytest.raises(TaskNotFoundError, match="No task with id"):
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=unknown, url=receiver.url)
                )
            with pytest.raises(TaskNotFoundError, match="No task with id"):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=unknown, id="one")
                )
            with pytest.raises(TaskNotFoundError, match="No task with id"):
                await client.list_task_push_notification_configs(
                    ListTaskPushNotificationConfigsRequest(task_id=unknown)
                )
            with pytest.raises(TaskNotFoundError, match="No task with id"):
                await client.delete_task_push_notification_config(
                    DeleteTaskPushNotificationConfigRequest(task_id=unknown, id="one")
                )

    asyncio.run(scenario())
    with httpx.Client(base_url=pushing.url, timeout=30) as http:
        requirements = [t["requirement"] for t in http.get("/api/tasks", params={"limit": 200}).json()["tasks"]]
    assert "Build a library app" in requirements and "Build a ghost" not in requirements


def test_a_task_holds_at_most_ten_configs_and_lists_them_in_pages(pushing: Server, receiver):
    async def scenario() -> None:
        async with a2a_client(pushing.url) as client:
            asked = await last_event(client.send_message(SendMessageRequest(message=user_message("Build a diary"))))
            task_id = asked.status_update.task_id
            ids = [f"c{n:02}" for n in range(MAX_CONFIGS_PER_TASK)]
            for config_id in ids:
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=task_id, id=config_id, url=f"{receiver.url}/{config_id}")
                )
            with pytest.raises(InvalidParamsError, match=f"already has {MAX_CONFIGS_PER_TASK} push configs"):
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=task_id, id="one-more", url=receiver.url)
                )
            # Replacing one is not adding one.
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="c03", url=receiver.url + "/moved")
            )

            pages: list[list[str]] = []
            token = ""
            while True:
                page = await client.list_task_push_notification_configs(
                    ListTaskPushNotificationConfigsRequest(task_id=task_id, page_size=4, page_token=token)
                )
                pages.append([c.id for c in page.configs])
                token = page.next_page_token
                if not token:
                    break
            assert [len(p) for p in pages] == [4, 4, 2]
            paged = [config_id for p in pages for config_id in p]
            assert sorted(paged) == ids  # each once
            whole = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert [c.id for c in whole.configs] == paged and whole.next_page_token == ""
            for bad in ("not-ours", "-1", "²"):  # "²" is a digit to str.isdigit, not a page
                with pytest.raises(InvalidParamsError, match="is not one this server gave"):
                    await client.list_task_push_notification_configs(
                        ListTaskPushNotificationConfigsRequest(task_id=task_id, page_token=bad)
                    )
            # Once one is deleted there is room again.
            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="c00")
            )
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="one-more", url=receiver.url)
            )
            await client.cancel_task(CancelTaskRequest(id=task_id))

    asyncio.run(scenario())


def test_private_addresses_are_refused_unless_allowed_and_the_card_says_when_pushes_are_sent(
    start_server: Callable[..., Server], server: Server, receiver
):
    strict = start_server(webhook_secret=SECRET)  # WEBHOOK_ALLOW_PRIVATE off

    async def scenario() -> None:
        async with a2a_client(strict.url) as client:
            asked = await last_event(client.send_message(SendMessageRequest(message=user_message("Build a blog"))))
            task_id = asked.status_update.task_id
            for url in (receiver.url, "http://169.254.169.254/latest/meta-data"):
                with pytest.raises(InvalidParamsError, match="WEBHOOK_ALLOW_PRIVATE") as refused:
                    await client.create_task_push_notification_config(
                        TaskPushNotificationConfig(task_id=task_id, url=url)
                    )
                assert "public http(s) URL of your receiver" in str(refused.value)
        async with a2a_client(server.url) as unsigned:  # no WEBHOOK_SECRET: nothing could sign a push
            asked = await last_event(unsigned.send_message(SendMessageRequest(message=user_message("Build a blog"))))
            with pytest.raises(PushNotificationNotSupportedError, match="WEBHOOK_SECRET"):
                await unsigned.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=asked.status_update.task_id, url="https://example.com/hook")
                )

    asyncio.run(scenario())
    with httpx.Client(timeout=30) as http:
        for url, sends in ((strict.url, True), (server.url, False)):
            card = http.get(url + "/.well-known/agent-card.json").json()
            assert card["capabilities"]["pushNotifications"] is sends


def test_a_config_outlives_a_restart(start_server: Callable[..., Server], tmp_path, receiver):
    first = start_server(**PUSHING, data_dir=str(tmp_path / "data"))

    async def configure() -> str:
        async with a2a_client(first.url) as client:
            asked = await last_event(client.send_message(SendMessageRequest(message=user_message("Build a forum"))))
            task_id = asked.status_update.task_id
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="kept", url=receiver.url + "/kept", token="tk")
            )
            return task_id

    task_id = asyncio.run(configure())
    first.stop()
    again = start_server(**PUSHING, data_dir=str(tmp_path / "data"))

    async def approve() -> StreamResponse:
        async with a2a_client(again.url) as client:
            return await last_event(client.send_message(SendMessageRequest(message=user_message("approve", task_id))))

    done = asyncio.run(approve())
    assert done.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    completed = wait_for(
        lambda: [
            r for r in receiver.received if as_update(r).status_update.status.state == TaskState.TASK_STATE_COMPLETED
        ],
        60,
        message="the COMPLETED push after the restart",
    )
    assert completed[0].path == "/hook/kept" and completed[0].headers["x-a2a-notification-token"] == "tk"


def test_push_config_calls_pass_the_same_api_key_gate(start_server: Callable[..., Server]):
    keyed = start_server(**PUSHING, api_keys="k-push-1")
    rpc = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "ListTaskPushNotificationConfigs",
        "params": {"taskId": "any"},
    }
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        assert http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0"}).status_code == 401
        wrong = http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0", "Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        right = http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0", "Authorization": "Bearer k-push-1"})
        assert right.status_code == 200 and "No task with id" in right.json()["error"]["message"]
