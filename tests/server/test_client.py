"""delivery/client.py against a real server: the whole log once, resuming after a real cut,
confirm, cancel, result, download, API keys and stream tokens, and one-line errors."""

from __future__ import annotations

import asyncio
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from delivery.client import (
    AsyncDeliveryClient,
    AuthenticationError,
    ConflictError,
    DeliveryClient,
    DeliveryError,
    Event,
    ServerUnreachableError,
    TaskNotFoundError,
)
from tests.support.api import AGENTS
from tests.support.server_process import Server, free_port
from tests.support.sse_client import read_stream
from tests.support.tcp_proxy import CuttableProxy

FILES = {"REQUIREMENTS.md", "TEST_PLAN.md", "TECH_DESIGN.md", "DELIVERY_REVIEW.md"}


def server_log(server: Server, task_id: str) -> list[dict]:
    """The task's whole log as the server sends it, read with the tests' own strict parser."""
    return read_stream(server.url, task_id, timeout=60).events


def as_sent(events: list[Event]) -> list[dict]:
    return [e.model_dump(exclude_none=True) for e in events]


@pytest.fixture
def proxy(slow_server: Server) -> Iterator[CuttableProxy]:
    p = CuttableProxy(slow_server.port)
    yield p
    p.close()


def test_events_yield_the_whole_log_once_and_stop_after_the_terminal_event(slow_server: Server) -> None:
    with DeliveryClient(slow_server.url) as client:
        task = client.run("Build a todo app with login", skip_confirmation=True)
        events = list(client.events(task.task_id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event_type == "end" and events[-1].terminal
    assert [e.agent_name for e in events if e.event_type == "agent_start"] == AGENTS
    assert as_sent(events) == server_log(slow_server, task.task_id)


def cut_once_after(proxy: CuttableProxy, sequence: int) -> Callable[[Event], None]:
    def maybe_cut(event: Event) -> None:
        if event.sequence == sequence:
            assert proxy.cut() >= 1

    return maybe_cut


def test_events_resume_after_a_dropped_connection_without_repeating_one(
    slow_server: Server, proxy: CuttableProxy
) -> None:
    with DeliveryClient(proxy.url) as client:
        task = client.run("Build a todo app with login", skip_confirmation=True)
        cut = cut_once_after(proxy, 30)
        events = []
        for event in client.events(task.task_id):
            events.append(event)
            cut(event)
    assert len(proxy.sse_ids) >= 2  # the first stream, cut, and the resumed one
    assert len(proxy.resumed_after) >= 2 and proxy.resumed_after[0] == 0
    assert proxy.resumed_after[1] >= 30  # asked for what followed the last event it had
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert as_sent(events) == server_log(slow_server, task.task_id)


def test_async_events_resume_after_a_dropped_connection_without_repeating_one(
    slow_server: Server, proxy: CuttableProxy
) -> None:
    async def follow() -> tuple[str, list[Event]]:
        async with AsyncDeliveryClient(proxy.url) as client:
            task = await client.run("Build a todo app with login", skip_confirmation=True)
            events = []
            async for event in client.events(task.task_id):
                events.append(event)
                if event.sequence == 25:
                    await asyncio.get_running_loop().run_in_executor(None, proxy.cut)
            assert (await client.status(task.task_id)).status == "succeeded"
            return task.task_id, events

    task_id, events = asyncio.run(follow())
    assert proxy.resumed_after[1] >= 25
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert as_sent(events) == server_log(slow_server, task_id)


def test_events_after_a_sequence_start_there(slow_server: Server) -> None:
    with DeliveryClient(slow_server.url) as client:
        task = client.run("Build a todo app", skip_confirmation=True)
        whole = list(client.events(task.task_id))
        rest = list(client.events(task.task_id, after=10))
    assert rest == whole[10:]


def test_confirm_revise_approve_then_result_and_download(server: Server, tmp_path: Path) -> None:
    with DeliveryClient(server.url) as client:
        task = client.run("Build a todo app with login")
        asked = 0
        types = []
        for event in client.events(task.task_id):
            types.append(event.event_type)
            if event.event_type == "awaiting_confirmation":
                asked += 1
                if asked == 1:
                    with pytest.raises(DeliveryError) as unsaid:  # changes need feedback
                        client.confirm(task.task_id, approved=False, feedback=None)
                    assert unsaid.value.status_code == 422 and "feedback" in str(unsaid.value)
                    assert client.confirm(task.task_id, approved=False, feedback="Add reminders").status == "running"
                else:
                    assert client.confirm(task.task_id).status == "running"
        result = client.result(task.task_id)
        folder = client.download(task.task_id, tmp_path / "out")
    assert asked == 2 and types.count("confirmed") == 2 and types[-1] == "end"
    assert result.status == "succeeded" and set(result.deliverables) >= {"requirements_analysis", "test_plan"}
    assert {p.name for p in folder.glob("*.md")} == FILES
    with zipfile.ZipFile(folder / "deliverables.zip") as z:
        assert "events.jsonl" in z.namelist()
    assert (folder / "REQUIREMENTS.md").read_text() == result.deliverables["requirements_analysis"]


def test_cancel_ends_the_stream_with_cancelled(slow_server: Server) -> None:
    with DeliveryClient(slow_server.url) as client:
        task = client.run("Build a todo app", skip_confirmation=True)
        last = None
        for event in client.events(task.task_id):
            last = event
            if event.event_type == "thought":
                client.cancel(task.task_id)
        assert last is not None and last.event_type == "cancelled"
        assert client.status(task.task_id).status == "cancelled"
        with pytest.raises(ConflictError) as unfinished:
            client.confirm(task.task_id)
    assert unfinished.value.status_code == 409


def test_result_of_an_unfinished_task_is_a_conflict(slow_server: Server) -> None:
    with DeliveryClient(slow_server.url) as client:
        task = client.run("Build a todo app")
        with pytest.raises(ConflictError) as caught:
            client.result(task.task_id)
        client.cancel(task.task_id)
    assert "\n" not in str(caught.value)


def test_unknown_task_is_one_line_that_names_it(server: Server) -> None:
    with DeliveryClient(server.url) as client, pytest.raises(TaskNotFoundError) as caught:
        list(client.events("00000000-0000-4000-8000-000000000000"))
    message = str(caught.value)
    assert message.startswith("task 00000000-0000-4000-8000-000000000000 was not found on 127.0.0.1:")
    assert "No task with id" in message
    assert "\n" not in message and caught.value.status_code == 404


def test_server_down_is_one_line_that_says_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with DeliveryClient(url) as client, pytest.raises(ServerUnreachableError) as caught:
        client.status("x")
    message = str(caught.value)
    assert message.startswith(f"cannot reach the service at {url} (") and "DELIVERY_URL" in message
    assert "\n" not in message


def test_bad_priority_is_a_422_that_lists_the_allowed_values(server: Server) -> None:
    with DeliveryClient(server.url) as client, pytest.raises(DeliveryError) as caught:
        client.run("Build a todo app", priority="urgent")
    assert caught.value.status_code == 422
    assert "priority" in str(caught.value) and "'low', 'normal' or 'high'" in str(caught.value)


def test_delivery_url_and_key_come_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_URL", server.url.removeprefix("http://"))
    with DeliveryClient() as client:
        assert client.base_url == server.url
        assert [a.name for a in client.crew()] == AGENTS


@pytest.fixture(scope="module")
def keyed_server(start_server: Callable[..., Server]) -> Server:
    return start_server(api_keys="client-key-1", scripted_token_delay_ms=2)


def test_api_key_required_wrong_and_right(keyed_server: Server) -> None:
    with DeliveryClient(keyed_server.url, api_key="") as anonymous, pytest.raises(AuthenticationError) as missing:
        anonymous.run("Build a todo app")
    assert missing.value.status_code == 401 and "DELIVERY_API_KEY" in str(missing.value)
    with DeliveryClient(keyed_server.url, api_key="guess") as wrong, pytest.raises(AuthenticationError) as refused:
        wrong.run("Build a todo app")
    assert refused.value.status_code == 403 and "guess" not in str(refused.value)
    with DeliveryClient(keyed_server.url, api_key="client-key-1") as client:
        task = client.run("Build a todo app", skip_confirmation=True)
        assert task.stream_token
        events = list(client.events(task.task_id))
    assert events[-1].event_type == "end"


def test_a_stream_token_opens_the_stream_without_the_key(keyed_server: Server) -> None:
    with DeliveryClient(keyed_server.url, api_key="client-key-1") as owner:
        task = owner.run("Build a todo app", skip_confirmation=True)
        token = owner.stream_token(task.task_id)
    with DeliveryClient(keyed_server.url, api_key="") as viewer:
        with pytest.raises(AuthenticationError):
            list(viewer.events(task.task_id))
        events = list(viewer.events(task.task_id, token=token))
        with pytest.raises(AuthenticationError):
            list(viewer.events(task.task_id, token=token[:-2] + "xx"))
    assert events[-1].event_type == "end" and [e.sequence for e in events] == list(range(1, len(events) + 1))


def test_events_go_on_across_a_server_restart(start_server: Callable[..., Server], tmp_path: Path) -> None:
    """SIGTERM sends the waiting task's viewers a `shutdown` frame and closes; the client skips
    it, reconnects until the restarted server answers, and goes on after the last event it had."""
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    events: list[Event] = []
    failure: list[BaseException] = []
    asked = threading.Event()

    def follow(task_id: str) -> None:
        try:
            with DeliveryClient(server.url) as viewer:
                for event in viewer.events(task_id):
                    events.append(event)
                    if event.event_type == "awaiting_confirmation":
                        asked.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    with DeliveryClient(server.url) as client:
        task = client.run("Build a diary")
    viewer = threading.Thread(target=follow, args=(task.task_id,), daemon=True)
    viewer.start()
    assert asked.wait(60)
    before = len(events)
    server.proc.terminate()
    server.proc.wait(timeout=15)
    again = start_server(data_dir=data, port=server.port)
    with DeliveryClient(again.url) as client:
        client.confirm(task.task_id)
    viewer.join(60)
    assert not viewer.is_alive() and not failure, failure
    assert before >= 2 and events[before].event_type == "confirmed"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)) and events[-1].event_type == "end"
