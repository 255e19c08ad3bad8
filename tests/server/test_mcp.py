"""The MCP door (/mcp) with the Python `mcp` client over streamable HTTP, against real servers:
a whole run with its progress notifications, confirm and cancel through tools, the documents
and the package as resources, API keys, rate limits and the audit log, errors as tool errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from pydantic import AnyUrl

from delivery.crew.roster import ROSTER
from delivery.errors import TaskNotFoundError
from delivery.security.auth import fingerprint
from delivery.tasks.store import TaskStore
from tests.support.mcp_client import call, session, tool_error, wait_state

KEY = "k-mcp-5e1d"
INTERVAL_S = 1.0  # MCP_PROGRESS_INTERVAL_S of the slow server


@pytest.fixture(scope="module")
def slow(start_server):
    """Tokens every 8 ms: a run lasts several progress intervals."""
    return start_server(scripted_token_delay_ms=8, mcp_progress_interval_s=INTERVAL_S)


def test_run_delivery_reports_progress_at_least_every_interval_and_returns_the_package(slow):
    notes: list[tuple[float, float, float | None, str | None]] = []

    async def scenario() -> tuple[Any, float, float]:
        async with session(slow.url) as client:

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                notes.append((time.monotonic(), progress, total, message))

            began = time.monotonic()
            result = await client.call_tool(
                "run_delivery", {"requirement": "Build a bug tracker"}, progress_callback=progress
            )
            return result, began, time.monotonic()

    result, began, ended = asyncio.run(scenario())
    assert not result.isError, result.content
    state = result.structuredContent
    assert state is not None and state["status"] == "succeeded" and state["verdict"] in ("GO", "NO-GO")
    assert ended - began > 4 * INTERVAL_S, "the run must outlast several intervals for the bound to mean anything"
    # At least one notification per interval from the call to its answer (plus scheduling slack).
    times = [began, *(t for t, *_ in notes), ended]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= INTERVAL_S + 0.5, gaps
    values = [v for _, v, _, _ in notes]
    assert all(b > a for a, b in itertools.pairwise(values)), values  # strictly increasing
    assert {total for _, _, total, _ in notes} == {ROSTER.total_steps}
    assert values[-1] == ROSTER.total_steps
    messages = [m or "" for *_, m in notes]
    for name in ROSTER.names:
        assert any(m.startswith(f"{name} is working") for m in messages), (name, messages)
    # Heartbeats: several notifications while one agent worked, with nothing new to say.
    assert len(notes) > 2 * ROSTER.total_steps
    # The package: every document, the same as /api gives, and the zip as a resource link.
    with httpx.Client(base_url=slow.url, timeout=30) as http:
        documents = http.get(f"/api/task/{state['task_id']}/result").json()["deliverables"]
    assert state["documents"] == documents and set(documents) == set(ROSTER.deliverable_keys)
    link = result.content[-1]
    assert link.type == "resource_link" and str(link.uri) == f"delivery://{state['task_id']}/package"


def test_confirm_through_a_tool_and_read_the_documents_while_and_after_it_runs(slow):
    async def scenario() -> None:
        async with session(slow.url) as client:
            started = await call(client, "start_delivery", requirement="Build a library catalogue")
            task_id = started["task_id"]
            waiting = await wait_state(client, task_id, "awaiting_confirmation")
            assert waiting["awaiting_confirmation"] and waiting["documents"] is None
            analysis_key = ROSTER.analyst.deliverable
            assert list(waiting["document_uris"]) == [analysis_key]
            # Readable while the task runs: the analysis, and the package of what exists so far.
            analysis = await client.read_resource(AnyUrl(f"delivery://{task_id}/{analysis_key}"))
            text = analysis.contents[0]
            assert text.mimeType == "text/markdown" and text.text.strip()  # type: ignore[union-attr]
            partial = await client.read_resource(AnyUrl(f"delivery://{task_id}/package"))
            with zipfile.ZipFile(io.BytesIO(_blob(partial))) as z:
                assert json.loads(z.read("task.json"))["status"] == "awaiting_confirmation"
            # Not yet written: an error that says so.
            later = ROSTER.agents[-1].deliverable
            with pytest.raises(McpError, match=f"{later} has not been produced yet"):
                await client.read_resource(AnyUrl(f"delivery://{task_id}/{later}"))
            # Changes without saying which: the core's own message, as a tool error.
            message = await tool_error(client, "confirm_delivery", task_id=task_id, approved=False)
            assert message.startswith("To request changes, say what to change in `feedback`")
            confirmed = await call(client, "confirm_delivery", task_id=task_id, approved=True)
            assert confirmed["status"] == "running" and confirmed["message"].startswith("Approved")
            done = await wait_state(client, task_id, "succeeded")
            assert done["verdict"] in ("GO", "NO-GO") and set(done["documents"]) == set(ROSTER.deliverable_keys)
            for key, document in done["documents"].items():
                read = await client.read_resource(AnyUrl(f"delivery://{task_id}/{key}"))
                assert read.contents[0].text == document  # type: ignore[union-attr]
            with httpx.Client(base_url=slow.url, timeout=30) as http:
                zipped = http.get(f"/api/task/{task_id}/deliverables.zip").content
                status = http.get(f"/api/task/{task_id}/status").json()
            package = await client.read_resource(AnyUrl(f"delivery://{task_id}/package"))
            assert package.contents[0].mimeType == "application/zip"
            with zipfile.ZipFile(io.BytesIO(_blob(package))) as ours, zipfile.ZipFile(io.BytesIO(zipped)) as api:
                assert sorted(ours.namelist()) == sorted(api.namelist())
            assert status["status"] == "succeeded"  # one task, seen through both doors
            listed = await call(client, "list_deliveries", limit=5)
            assert task_id in [t["task_id"] for t in listed["tasks"]]
            completion = await client.complete(
                _template_ref("delivery://{task_id}/{document}"), {"name": "document", "value": analysis_key[:4]}
            )
            assert analysis_key in completion.completion.values

    asyncio.run(scenario())


def test_cancel_through_a_tool(slow):
    async def scenario() -> None:
        async with session(slow.url) as client:
            task_id = (await call(client, "start_delivery", requirement="Build a chat app", skip_confirmation=True))[
                "task_id"
            ]
            await wait_state(client, task_id, "running")
            cancelled = await call(client, "cancel_delivery", task_id=task_id)
            assert cancelled == {
                "task_id": task_id,
                "status": "cancelled",
                "message": "The task is cancelled.",
                "replayed": False,
            }
            assert await call(client, "cancel_delivery", task_id=task_id) == cancelled  # as /api: idempotent
            with httpx.Client(base_url=slow.url, timeout=30) as http:
                assert http.get(f"/api/task/{task_id}/status").json()["status"] == "cancelled"
            # A run that ends cancelled: run_delivery answers with a tool error saying so.
            run = asyncio.create_task(client.call_tool("run_delivery", {"requirement": "Build a wiki"}))
            listed: list[dict[str, Any]] = []
            while not listed:
                await asyncio.sleep(0.1)
                listed = (await call(client, "list_deliveries", status="running", limit=5))["tasks"]
            await call(client, "cancel_delivery", task_id=listed[0]["task_id"])
            result = await run
            assert result.isError
            assert result.content[0].text.startswith(f"Task {listed[0]['task_id']} cancelled")  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_an_idempotency_key_makes_a_retried_tool_call_give_its_first_answer_and_start_nothing(slow):
    key, other_key = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario() -> None:
        async with session(slow.url) as client:
            first = await call(
                client,
                "start_delivery",
                requirement="Build a kanban board",
                skip_confirmation=True,
                idempotency_key=key,
            )
            assert first["replayed"] is False
            # The same request written differently (spaces around the requirement) is the same request.
            again = await call(
                client,
                "start_delivery",
                requirement="  Build a kanban board\n",
                skip_confirmation=True,
                idempotency_key=key,
            )
            assert again == {**first, "replayed": True}
            assert await _requirement_count(client, "Build a kanban board") == 1
            different = await tool_error(
                client, "start_delivery", requirement="Build a wiki", skip_confirmation=True, idempotency_key=key
            )
            assert different.startswith("This idempotency_key was already used for a different request")
            unusable = await tool_error(client, "start_delivery", requirement="Build a wiki", idempotency_key="clé")
            assert unusable.startswith("idempotency_key must be 1 to 255 visible ASCII characters")

            cancelled = await call(client, "cancel_delivery", task_id=first["task_id"], idempotency_key=other_key)
            assert cancelled["status"] == "cancelled" and cancelled["replayed"] is False
            replayed = await call(client, "cancel_delivery", task_id=first["task_id"], idempotency_key=other_key)
            assert replayed == {**cancelled, "replayed": True}
            # A key names one request: the same key on another tool is refused.
            reused = await tool_error(
                client,
                "start_delivery",
                requirement="Build a kanban board",
                skip_confirmation=True,
                idempotency_key=other_key,
            )
            assert reused.startswith("This idempotency_key was already used for a different request")

    asyncio.run(scenario())


def test_confirm_delivery_with_a_key_asks_for_one_revision_however_often_it_is_retried(slow):
    key = str(uuid.uuid4())
    change = {"approved": False, "feedback": "Group the photos by date", "idempotency_key": key}

    async def scenario() -> None:
        async with session(slow.url) as client:
            task_id = (await call(client, "start_delivery", requirement="Build a photo album"))["task_id"]
            await wait_state(client, task_id, "awaiting_confirmation")
            asked = await call(client, "confirm_delivery", task_id=task_id, **change)
            assert asked["status"] == "running" and asked["replayed"] is False
            again = await call(client, "confirm_delivery", task_id=task_id, **change)
            assert again == {**asked, "replayed": True}
            other = await tool_error(client, "confirm_delivery", task_id=task_id, approved=True, idempotency_key=key)
            assert other.startswith("This idempotency_key was already used for a different request")
            await wait_state(client, task_id, "awaiting_confirmation")  # the revised analysis asks again
            package = await client.read_resource(AnyUrl(f"delivery://{task_id}/package"))
            with zipfile.ZipFile(io.BytesIO(_blob(package))) as z:
                feedback = json.loads(z.read("task.json"))["feedback"]
            assert len(feedback) == 1 and "Group the photos by date" in json.dumps(feedback)
            await call(client, "cancel_delivery", task_id=task_id)

    asyncio.run(scenario())


def test_run_delivery_called_again_with_its_key_after_a_dropped_call_follows_the_same_task_to_its_end(slow):
    key, requirement = str(uuid.uuid4()), "Build a dropped-call tracker"
    arguments = {"requirement": requirement, "idempotency_key": key}

    async def dropped() -> None:
        async with session(slow.url) as client:
            heard = asyncio.Event()

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                heard.set()

            run = asyncio.create_task(client.call_tool("run_delivery", arguments, progress_callback=progress))
            await asyncio.wait_for(heard.wait(), 30)
            run.cancel()  # the client gives up on the call and goes away
            with contextlib.suppress(asyncio.CancelledError):
                await run

    async def retried() -> tuple[Any, int]:
        async with session(slow.url) as client:
            result = await client.call_tool("run_delivery", arguments)
            return result, await _requirement_count(client, requirement)

    asyncio.run(dropped())
    result, count = asyncio.run(retried())
    assert not result.isError, result.content
    state = result.structuredContent
    assert state is not None and state["status"] == "succeeded" and state["requirement"] == requirement
    assert count == 1  # one task, followed by both calls
    assert set(state["documents"]) == set(ROSTER.deliverable_keys)


def test_a_retried_run_delivery_whose_task_was_purged_since_says_so(start_server, tmp_path):
    """The key outlives its task (TASK_RETENTION_DAYS): the retry, on a process that does not
    hold the task's log, answers that the task is gone, as a tool error."""
    first = start_server(data_dir=str(tmp_path))
    arguments = {"requirement": "Build a guest book", "idempotency_key": str(uuid.uuid4())}

    async def run(url: str) -> Any:
        async with session(url) as client:
            return await client.call_tool("run_delivery", arguments)

    done = asyncio.run(run(first.url))
    assert not done.isError and done.structuredContent is not None
    task_id = done.structuredContent["task_id"]
    first.stop()
    store = TaskStore(f"sqlite:///{tmp_path.resolve() / 'tasks.db'}")
    try:
        assert store.purge_finished_before(time.time() + 1) == 1
    finally:
        store.close()
    other = start_server(data_dir=str(tmp_path))
    retried = asyncio.run(run(other.url))
    assert retried.isError and retried.content[0].text == str(TaskNotFoundError(task_id))


async def _requirement_count(client: ClientSession, requirement: str) -> int:
    tasks = (await call(client, "list_deliveries", limit=200))["tasks"]
    return sum(1 for t in tasks if t["requirement"] == requirement)


def test_one_task_through_two_doors(slow):
    """Started through /api, watched and confirmed through MCP; started through MCP, cancelled
    through /api and seen so through MCP."""

    async def scenario() -> None:
        async with session(slow.url) as client, httpx.AsyncClient(base_url=slow.url, timeout=30) as http:
            started = await http.post("/api/run_task", json={"user_requirement": "Build a recipe book"})
            task_id = started.json()["task_id"]
            waiting = await wait_state(client, task_id, "awaiting_confirmation")
            assert waiting["requirement"] == "Build a recipe book"
            await call(client, "confirm_delivery", task_id=task_id, approved=True)
            done = await wait_state(client, task_id, "succeeded")
            result = (await http.get(f"/api/task/{task_id}/result")).json()
            assert done["documents"] == result["deliverables"]
            assert done["verdict"] == result["traceability"]["verdict"]
            assert done["usage"]["total_tokens"] == result["usage"]["total"]["total_tokens"] > 0

            other = (await call(client, "start_delivery", requirement="Build a timer", skip_confirmation=True))[
                "task_id"
            ]
            assert (await http.post(f"/api/task/{other}/cancel")).json()["status"] == "cancelled"
            assert (await call(client, "get_delivery", task_id=other))["status"] == "cancelled"

    asyncio.run(scenario())


def test_a_server_stopping_ends_run_delivery_with_where_to_follow_the_task(start_server):
    """uvicorn waits for open responses before it stops: a run_delivery in flight must end
    (the task is handed back and goes on elsewhere), not hold the process."""
    stopping = start_server(scripted_token_delay_ms=20, mcp_progress_interval_s=INTERVAL_S)

    async def scenario() -> tuple[Any, float]:
        async with session(stopping.url) as client:
            first = asyncio.Event()

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                first.set()

            run = asyncio.create_task(
                client.call_tool("run_delivery", {"requirement": "Build a quiz"}, progress_callback=progress)
            )
            await asyncio.wait_for(first.wait(), 30)
            stopping.proc.terminate()
            began = time.monotonic()
            result = await asyncio.wait_for(run, 30)
            return result, time.monotonic() - began

    result, took = asyncio.run(scenario())
    assert result.isError and "This server is shutting down; task " in result.content[0].text
    assert took < INTERVAL_S + 5
    assert stopping.proc.wait(30) is not None


def test_an_unknown_task_is_a_tool_error_with_the_message_that_says_what_to_do(server):
    async def scenario() -> None:
        async with session(server.url) as client:
            for tool in ("get_delivery", "cancel_delivery"):
                assert await tool_error(client, tool, task_id="no-such-task") == str(TaskNotFoundError("no-such-task"))
            message = await tool_error(client, "confirm_delivery", task_id="no-such-task", approved=True)
            assert message == str(TaskNotFoundError("no-such-task"))
            empty = await tool_error(client, "start_delivery", requirement="   ")
            assert "user_requirement is empty: describe the software you want built" in empty
            with pytest.raises(McpError, match="No task with id 'no-such-task'"):
                await client.read_resource(AnyUrl("delivery://no-such-task/package"))
            with pytest.raises(McpError, match="No deliverable called 'poem'"):
                await client.read_resource(AnyUrl("delivery://no-such-task/poem"))

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.log"
    server = start_server(api_keys=KEY, audit_log=str(audit), rate_limit_run_task="2/minute")
    server.audit_path = audit
    return server


def test_api_keys_rate_limits_and_audit_hold_for_the_mcp_door(keyed):
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        missing = http.post("/mcp", json=initialize, headers=accept)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <key>" in missing.json()["detail"]
        wrong = http.post("/mcp", json=initialize, headers={**accept, "Authorization": "Bearer guess"})
        assert wrong.status_code == 403 and "API_KEYS" in wrong.json()["detail"]
        assert http.post("/mcp", json=initialize, headers={**accept, "Authorization": f"Bearer {KEY}"}).is_success

    async def scenario() -> list[str]:
        async with session(keyed.url, KEY) as client:
            ids = [
                (await call(client, "start_delivery", requirement=f"Build app {n}", skip_confirmation=True))["task_id"]
                for n in range(2)
            ]
            refused = await tool_error(client, "start_delivery", requirement="Build app 3")
            assert refused.startswith("Too many requests: the limit is 2 per 1 minute per client (RATE_LIMIT_RUN_TASK)")
            await call(client, "cancel_delivery", task_id=ids[0])
            return ids

    ids = asyncio.run(scenario())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in keyed.audit_path.read_text().splitlines()]
        mcp_lines = [line for line in lines if line["method"] == "MCP" and line["tool"]]
        if len(mcp_lines) >= 4:
            break
        time.sleep(0.1)
    who = mcp_lines[0]["who"]
    assert who.startswith("key:") and KEY not in json.dumps(lines)
    assert [(line["tool"], line["outcome"], line["task_id"]) for line in mcp_lines] == [
        ("start_delivery", "ok", ids[0]),
        ("start_delivery", "ok", ids[1]),
        ("start_delivery", "rejected", None),
        ("cancel_delivery", "ok", ids[0]),
    ]
    assert all(len(line["requirement_sha256"]) == 64 for line in mcp_lines[:3])
    refused_http = [line for line in lines if line["method"] == "MCP" and line["tool"] is None]
    assert [(line["error"], line["who"]) for line in refused_http] == [
        ("AuthenticationRequiredError", "anonymous"),
        ("ForbiddenError", fingerprint("guess")),
    ]


def test_dns_rebinding_check_refuses_foreign_host_names_and_lets_configured_ones_in(start_server):
    named = start_server(mcp_allowed_hosts="delivery.example.com")
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(base_url=named.url, timeout=30) as http:
        foreign = http.post("/mcp", json=body, headers={**headers, "Host": "attacker.example"})
        assert foreign.status_code == 421
        for host in ("delivery.example.com", f"127.0.0.1:{named.port}"):
            answer = http.post("/mcp", json=body, headers={**headers, "Host": host})
            assert answer.status_code == 200, (host, answer.text)


def _blob(result: Any) -> bytes:
    import base64

    return base64.b64decode(result.contents[0].blob)


def _template_ref(uri: str) -> Any:
    from mcp.types import ResourceTemplateReference

    return ResourceTemplateReference(type="ref/resource", uri=uri)


def test_the_readme_client_config_works_as_written(keyed):
    """README's `.mcp.json`, with its URL pointed at the test server and ${DELIVERY_API_KEY} set,
    as Claude Code expands it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example: mcp\b[^>]*-->\n```json\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no example marked 'mcp'"
    entry = json.loads(block.group(1))["mcpServers"]["delivery"]
    assert entry["type"] == "http" and entry["url"] == "http://127.0.0.1:8000/mcp"
    headers = {k: v.replace("${DELIVERY_API_KEY}", KEY) for k, v in entry["headers"].items()}
    url = entry["url"].replace("http://127.0.0.1:8000", keyed.url)

    async def scenario() -> list[str]:
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            return [tool.name for tool in (await client.list_tools()).tools]

    assert asyncio.run(scenario()) == [
        "start_delivery",
        "get_delivery",
        "confirm_delivery",
        "cancel_delivery",
        "list_deliveries",
        "run_delivery",
    ]
