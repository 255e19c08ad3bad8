"""The A2A door with the a2a-sdk client against real servers (scripted provider): a streamed run
to completed with its four artifacts and the verdict, input-required answered by messages, cancel,
get and list, a subscription cut mid-run and resumed, API keys, and the 0.3 protocol."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError, InvalidParamsError, TaskNotCancelableError, UnsupportedOperationError
from google.protobuf.json_format import MessageToDict

from delivery.crew.roster import ROSTER
from tests.support.a2a_client import a2a_client, artifacts, assert_resumed_exactly, collect, follow_across_a_cut, states
from tests.support.a2a_client import message as a2a_message
from tests.support.api import run_task, stream_until, wait_status
from tests.support.tcp_proxy import CuttableProxy
from tests.support.waiting import wait_for

KEY = "k-a2a-77c1"


@pytest.fixture(scope="module")
def slow(start_server):
    """Tokens every 8 ms: a run lasts seconds, long enough to cut and cancel it mid-way."""
    return start_server(scripted_token_delay_ms=8)


def test_a_streamed_run_ends_completed_with_four_artifacts_and_the_verdict_one_task_with_api(server):
    async def scenario() -> list[StreamResponse]:
        async with a2a_client(server.url) as client:
            request = SendMessageRequest(message=a2a_message("Build a bug tracker", skip_confirmation=True))
            return await collect(client.send_message(request))

    events = asyncio.run(scenario())
    assert events[0].HasField("task"), "the Task comes before its first update"
    task_id = events[0].task.id
    assert events[0].task.context_id == task_id
    seen = states(events)
    assert seen[-1] == "TASK_STATE_COMPLETED" and set(seen[:-1]) == {"TASK_STATE_WORKING"}
    documents = artifacts(events)
    assert list(documents) == list(ROSTER.deliverable_keys)  # each as its agent finished, in order
    final = events[-1].status_update
    with httpx.Client(base_url=server.url, timeout=30) as http:
        result = http.get(f"/api/task/{task_id}/result").json()
    assert result["status"] == "succeeded"  # the same task through /api
    assert documents == result["deliverables"]
    verdict = result["traceability"]["verdict"]
    assert final.status.message.parts[0].text.startswith(f"Verdict: {verdict} (")
    assert MessageToDict(final.metadata)["verdict"] == verdict


def test_input_required_is_answered_by_messages_feedback_then_approval(server):
    async def scenario() -> tuple[Task, list[StreamResponse], list[StreamResponse], Task]:
        async with a2a_client(server.url) as client:
            asked = await collect(
                client.send_message(SendMessageRequest(message=a2a_message("Build a recipe planner")))
            )
            assert states(asked)[-1] == "TASK_STATE_INPUT_REQUIRED"  # the stream ends there
            task = await client.get_task(GetTaskRequest(id=asked[0].task.id))
            # The TCK reuses messageIds in follow-ups: the same id is accepted.
            revised = await collect(
                client.send_message(SendMessageRequest(message=a2a_message("Add offline mode", task.id)))
            )
            approved = await collect(client.send_message(SendMessageRequest(message=a2a_message("approve", task.id))))
            done = await client.get_task(GetTaskRequest(id=task.id))
            with pytest.raises(UnsupportedOperationError, match="it takes no more messages"):
                await collect(client.send_message(SendMessageRequest(message=a2a_message("approve", task.id))))
            wrong = a2a_message("approve", task.id)
            wrong.context_id = "another-context"
            with pytest.raises(InvalidParamsError, match="leave contextId out"):
                await collect(client.send_message(SendMessageRequest(message=wrong)))
            return task, revised, approved, done

    waiting, revised, approved, done = asyncio.run(scenario())
    assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert [a.artifact_id for a in waiting.artifacts] == [ROSTER.analyst.deliverable]
    assert states(revised)[-1] == "TASK_STATE_INPUT_REQUIRED"  # the revised analysis asks again
    assert list(artifacts(revised)) == [ROSTER.analyst.deliverable]
    assert states(approved)[-1] == "TASK_STATE_COMPLETED"
    assert done.status.state == TaskState.TASK_STATE_COMPLETED and len(done.artifacts) == 4
    with httpx.Client(base_url=server.url, timeout=30) as http:
        record = http.get(f"/api/task/{waiting.id}/status").json()
    assert record["status"] == "succeeded"


def test_cancel_get_and_list(slow):
    async def scenario() -> None:
        async with a2a_client(slow.url, streaming=False) as client:
            request = SendMessageRequest(
                message=a2a_message("Build a parking app", skip_confirmation=True),
                configuration=SendMessageConfiguration(return_immediately=True),
            )
            (answer,) = await collect(client.send_message(request))
            task_id = answer.task.id
            assert answer.task.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
            cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
            got = await client.get_task(GetTaskRequest(id=task_id))
            assert got.status.state == TaskState.TASK_STATE_CANCELED
            assert got.history[0].parts[0].text == "Build a parking app"
            listed = await client.list_tasks(ListTasksRequest(page_size=5))
            assert task_id in [t.id for t in listed.tasks]
            only = await client.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_CANCELED, page_size=50))
            assert task_id in [t.id for t in only.tasks]
            assert {t.status.state for t in only.tasks} == {TaskState.TASK_STATE_CANCELED}
            with pytest.raises(A2AError, match="No task with id"):
                await client.get_task(GetTaskRequest(id="no-such-task"))
            # A finished task cannot be cancelled: the first task of the list that succeeded.
            done = await client.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, page_size=1))
            if done.tasks:
                with pytest.raises(TaskNotCancelableError):
                    await client.cancel_task(CancelTaskRequest(id=done.tasks[0].id))

    asyncio.run(scenario())
    with httpx.Client(base_url=slow.url, timeout=30) as http:
        task_id = run_task(http, "Build a kiosk")
        wait_status(http, task_id, "succeeded")

    async def not_cancelable() -> None:
        async with a2a_client(slow.url) as client:
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=task_id))

    asyncio.run(not_cancelable())


def test_subscribe_after_a_cut_loses_nothing_and_repeats_nothing(slow):
    """A task started through /api, followed through A2A across a dropped connection: the second
    subscription's Task holds the log up to its `sequence`, and its updates are exactly the
    mapped events after it, once each."""
    proxy = CuttableProxy(slow.port)
    try:
        with httpx.Client(base_url=slow.url, timeout=30) as http:
            task_id = run_task(http, "Build a chess club site")
        before, after = follow_across_a_cut(task_id, proxy, proxy.url)
    finally:
        proxy.close()
    assert_resumed_exactly(before, after, stream_until(slow.url, task_id, "end").events)


def test_api_keys_the_card_says_how_and_a_bad_key_is_refused(start_server, tmp_path):
    keyed = start_server(api_keys=KEY, audit_log=str(tmp_path / "audit.log"))
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        card = http.get("/.well-known/agent-card.json")  # open: it says how to present a key
        assert card.status_code == 200
        body = card.json()
        assert set(body["securitySchemes"]) == {"bearer", "apiKey"}
        assert [(i["protocolBinding"], i["protocolVersion"]) for i in body["supportedInterfaces"]] == [
            ("JSONRPC", "1.0"),
            ("HTTP+JSON", "1.0"),
            ("JSONRPC", "0.3"),
            ("HTTP+JSON", "0.3"),
        ]
        assert all(i["url"].startswith(keyed.url) for i in body["supportedInterfaces"])
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
        assert http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0"}).status_code == 401
        wrong = http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0", "Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and "key" in wrong.json()["detail"]
        assert http.get("/a2a/rest/tasks", headers={"A2A-Version": "1.0"}).status_code == 401

    async def scenario() -> str:
        async with a2a_client(keyed.url, key=KEY, streaming=False) as client:
            request = SendMessageRequest(
                message=a2a_message("Build a wiki", skip_confirmation=True),
                configuration=SendMessageConfiguration(return_immediately=True),
            )
            (answer,) = await collect(client.send_message(request))
            return answer.task.id

    task_id = asyncio.run(scenario())

    def a2a_lines() -> list[dict[str, Any]] | None:  # the audit log is written by its own thread
        lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        found = [line for line in lines if line["method"] == "A2A"]
        return found if any(line.get("task_id") == task_id for line in found) else None

    a2a = wait_for(a2a_lines, timeout=10, message="the SendMessage audit line")
    assert {"operation": "SendMessage", "outcome": "ok", "task_id": task_id} in [
        {k: line[k] for k in ("operation", "outcome", "task_id")} for line in a2a
    ]
    assert any(line["outcome"] == "rejected" and line["who"] != "anonymous" for line in a2a)  # the wrong key


def test_the_0_3_protocol_over_json_rpc(server):
    async def scenario() -> tuple[list[StreamResponse], Task]:
        async with a2a_client(server.url, version="0.3") as client:
            request = SendMessageRequest(message=a2a_message("Build a timesheet app", skip_confirmation=True))
            events = await collect(client.send_message(request))
            task_id = next(e.task.id for e in events if e.HasField("task"))
            return events, await client.get_task(GetTaskRequest(id=task_id))

    events, task = asyncio.run(scenario())
    assert states(events)[-1] == "TASK_STATE_COMPLETED"
    assert sorted(artifacts(events)) == sorted(ROSTER.deliverable_keys)
    assert task.status.state == TaskState.TASK_STATE_COMPLETED and len(task.artifacts) == 4


def test_the_readme_example_runs_as_written(server, tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: a2a\b[^>]*-->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no example marked 'a2a'"
    code = block.group(1).replace("http://127.0.0.1:8000", server.url)
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("document:")] == [
        f"document: {spec.filename}" for spec in ROSTER.agents
    ] + ["document: " + ROSTER.agents[-1].filename]  # the review, completed by the crew, comes again
    assert lines[-1].startswith("Verdict: ")


def test_tck_hooks_are_off_by_default_and_run_tck_messages_straight_through_when_on(server, start_server):
    def final_states(url: str, message_id: str) -> list[str]:
        async def scenario() -> list[str]:
            async with a2a_client(url) as client:
                message = a2a_message("Build a tck fixture")
                message.message_id = message_id
                return states(await collect(client.send_message(SendMessageRequest(message=message))))

        return asyncio.run(scenario())

    assert final_states(server.url, "tck-complete-task-1")[-1] == "TASK_STATE_INPUT_REQUIRED"  # off: a plain message
    hooked = start_server(a2a_tck_hooks="true")
    assert final_states(hooked.url, "tck-complete-task-1")[-1] == "TASK_STATE_COMPLETED"
    assert final_states(hooked.url, "tck-input-required-1")[-1] == "TASK_STATE_INPUT_REQUIRED"
    assert final_states(hooked.url, "m-1")[-1] == "TASK_STATE_INPUT_REQUIRED"


def test_a_subscription_goes_on_through_input_required_to_the_end(server):
    async def scenario() -> tuple[list[StreamResponse], list[StreamResponse]]:
        async with a2a_client(server.url) as client:
            asked = await collect(client.send_message(SendMessageRequest(message=a2a_message("Build a quiz app"))))
            task_id = asked[0].task.id
            following = asyncio.ensure_future(collect(client.subscribe(SubscribeToTaskRequest(id=task_id))))
            await asyncio.sleep(0.5)
            also = asyncio.ensure_future(collect(client.subscribe(SubscribeToTaskRequest(id=task_id))))
            await asyncio.sleep(0.5)
            assert not following.done(), "the subscription must not end at input-required"
            await collect(client.send_message(SendMessageRequest(message=a2a_message("approve", task_id))))
            return await asyncio.wait_for(following, 60), await asyncio.wait_for(also, 60)

    events, same = asyncio.run(scenario())
    assert same == events  # every subscriber gets the same events, the Task first too
    assert events[0].task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert states(events)[-1] == "TASK_STATE_COMPLETED"
