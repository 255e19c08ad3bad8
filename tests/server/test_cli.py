"""The `delivery` CLI (delivery/cli.py) as a person uses it: under a pseudo-terminal (pexpect),
against a real server, answering its prompts; and as scripts use it (--json, exit status)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import AGENTS, wait_finished, wait_status
from tests.support.server_process import Server, free_port
from tests.support.tcp_proxy import CuttableProxy
from tests.support.terminal import DELIVERY, FILES, environment, finish, script, task_id_of, terminal


@pytest.fixture(scope="module")
def cli_server(start_server: Callable[..., Server]) -> Server:
    """Tokens every 4 ms: a run lasts long enough to press Ctrl-C while an agent writes."""
    return start_server(scripted_token_delay_ms=4, sse_heartbeat_s=0.5)


def test_run_asks_to_confirm_takes_changes_then_approval_and_saves_the_deliverables(
    cli_server: Server, tmp_path: Path
) -> None:
    child = terminal(cli_server.url, "run", "开发一个简单的待办事项应用", cwd=tmp_path)
    task_id = task_id_of(child)
    child.expect("The ProductManager asks you to confirm the analysis")
    child.expect("Approve it, request changes, or leave it waiting")
    child.expect(r"approve/changes/wait.*\(approve\).*: ")
    child.sendline("changes")
    child.expect("What should change")
    child.sendline("加上提醒功能")
    child.expect("Approve it, request changes")  # the revised analysis, asked again
    child.sendline("approve")
    for agent in AGENTS[1:]:
        child.expect(f"{agent} is writing")
    child.expect("4/4 steps")
    child.expect("Verdict: GO")
    child.expect(rf"Deliverables saved in delivery-{task_id[:8]}/")
    assert finish(child) == 0
    folder = tmp_path / f"delivery-{task_id[:8]}"
    assert sorted(p.name for p in folder.glob("*.md")) == FILES
    status = httpx.get(f"{cli_server.url}/api/task/{task_id}/status").json()
    assert status["status"] == "succeeded"
    result = httpx.get(f"{cli_server.url}/api/task/{task_id}/result").json()
    assert (folder / "REQUIREMENTS.md").read_text() == result["deliverables"]["requirements_analysis"]


def test_without_revision_rounds_left_only_approve_or_wait_is_offered(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(max_revision_rounds=1)
    child = terminal(server.url, "run", "Build a todo app", "--no-download", cwd=tmp_path)
    child.expect(r"approve/changes/wait")
    child.sendline("changes")
    child.expect("What should change")
    child.sendline("Add reminders")
    child.expect("No revision rounds left: approve it, or leave it waiting")
    child.expect(r"approve/wait")
    child.sendline("changes")  # not a choice: asked again
    child.expect("Please select one of the available options")
    child.sendline("approve")
    child.expect("Verdict: GO")
    assert finish(child) == 0


def test_ctrl_c_then_detach_leaves_the_task_running_and_follow_joins_it(cli_server: Server, tmp_path: Path) -> None:
    child = terminal(cli_server.url, "run", "--yes", "Build a todo app", cwd=tmp_path)
    task_id = task_id_of(child)
    child.expect("ProductManager is writing")
    child.sendcontrol("c")
    child.expect(rf"Cancel task {task_id}, detach \(it goes on\), or keep watching")
    child.sendline("detach")
    child.expect(f"Detached; task {task_id} goes on. Rejoin it with: delivery follow {task_id}")
    assert finish(child) == 0
    assert httpx.get(f"{cli_server.url}/api/task/{task_id}/status").json()["status"] == "running"

    follower = terminal(cli_server.url, "follow", task_id, "--out", "out", cwd=tmp_path)
    follower.expect("Verdict: GO")
    follower.expect("Deliverables saved in out/")
    assert finish(follower) == 0


def test_ctrl_c_then_cancel_stops_the_task(cli_server: Server, tmp_path: Path) -> None:
    child = terminal(cli_server.url, "run", "--yes", "Build a todo app", cwd=tmp_path)
    task_id = task_id_of(child)
    child.expect("ProductManager is writing")
    child.sendcontrol("c")
    child.expect("Cancel task")
    child.sendline("cancel")
    child.expect("Task cancelled")
    assert finish(child) == 3
    assert httpx.get(f"{cli_server.url}/api/task/{task_id}/status").json()["status"] == "cancelled"


@pytest.fixture
def proxy(cli_server: Server) -> Iterator[CuttableProxy]:
    p = CuttableProxy(cli_server.port)
    yield p
    p.close()


def test_the_live_view_goes_on_after_a_connection_cut(proxy: CuttableProxy, tmp_path: Path) -> None:
    child = terminal(proxy.url, "run", "--yes", "Build a todo app", "--no-download", cwd=tmp_path)
    child.expect("QAEngineer is writing")
    assert proxy.cut() >= 1
    child.expect("Coordinator is writing")
    child.expect("Verdict: GO")
    assert finish(child) == 0
    assert len(proxy.sse_ids) >= 2 and proxy.resumed_after[1] > 0


def test_json_prints_each_event_once_across_a_cut(cli_server: Server, proxy: CuttableProxy, tmp_path: Path) -> None:
    task_id = httpx.post(
        f"{cli_server.url}/api/run_task", json={"user_requirement": "Build a todo app", "skip_confirmation": True}
    ).json()["task_id"]
    process = subprocess.Popen(
        [DELIVERY, "follow", task_id, "--json"],
        env=environment(proxy.url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if len(lines) == 40:
            assert proxy.cut() >= 1
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    assert [e["sequence"] for e in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["event_type"] == "end" and len(proxy.sse_ids) >= 2
    log = httpx.get(f"{cli_server.url}/api/task/{task_id}/deliverables.zip")
    assert log.status_code == 200


def test_status_confirm_cancel_and_download_commands(cli_server: Server, tmp_path: Path) -> None:
    task_id = httpx.post(f"{cli_server.url}/api/run_task", json={"user_requirement": "Build a todo app"}).json()[
        "task_id"
    ]
    early = script(cli_server.url, "confirm", task_id, cwd=tmp_path)
    assert early.returncode == 1 and early.stderr.startswith("delivery: ") and early.stderr.count("\n") == 1
    assert "awaiting_confirmation" in early.stderr

    with httpx.Client(base_url=cli_server.url) as client:
        wait_status(client, task_id, "awaiting_confirmation")
    shown = script(cli_server.url, "status", task_id, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{task_id}: awaiting_confirmation, step 1/4")
    approved = script(cli_server.url, "confirm", task_id, cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    with httpx.Client(base_url=cli_server.url) as client:
        wait_finished(client, task_id)
    saved = script(cli_server.url, "download", task_id, "--out", "docs", cwd=tmp_path)
    assert saved.returncode == 0 and sorted(p.name for p in (tmp_path / "docs").glob("*.md")) == FILES
    late = script(cli_server.url, "cancel", task_id, cwd=tmp_path)
    assert late.returncode == 1 and late.stderr.count("\n") == 1 and "succeeded" in late.stderr


def test_unknown_task_server_down_and_bad_input_are_one_line(cli_server: Server, tmp_path: Path) -> None:
    unknown = script(cli_server.url, "follow", "no-such-task", cwd=tmp_path)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("delivery: task no-such-task was not found on 127.0.0.1:")
    assert unknown.stderr.count("\n") == 1
    down_url = f"http://127.0.0.1:{free_port()}"
    down = script(down_url, "status", "x", cwd=tmp_path)
    assert down.returncode == 1 and down.stderr.startswith(f"delivery: cannot reach the service at {down_url} (")
    assert down.stderr.endswith("); is it running? Set DELIVERY_URL or pass --url.\n") and down.stderr.count("\n") == 1
    empty = script(cli_server.url, "run", "   ", cwd=tmp_path)
    assert empty.returncode == 1 and empty.stderr.count("\n") == 1
    assert "user_requirement is empty: describe the software you want built" in empty.stderr


@pytest.fixture(scope="module")
def keyed_cli_server(start_server: Callable[..., Server]) -> Server:
    return start_server(api_keys="cli-key", scripted_token_delay_ms=1)


def test_api_keys_from_the_environment_or_the_flag(keyed_cli_server: Server, tmp_path: Path) -> None:
    missing = script(keyed_cli_server.url, "run", "--yes", "Build a todo app", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "requires an API key" in missing.stderr and "DELIVERY_API_KEY" in missing.stderr
    wrong = script(keyed_cli_server.url, "run", "--yes", "Build a todo app", "--api-key", "nope", cwd=tmp_path)
    assert wrong.returncode == 1 and "is not valid here" in wrong.stderr and "nope" not in wrong.stderr
    right = script(
        keyed_cli_server.url, "run", "--yes", "Build a todo app", "--json", cwd=tmp_path, DELIVERY_API_KEY="cli-key"
    )
    assert right.returncode == 0, right.stderr
    events = [json.loads(line) for line in right.stdout.splitlines()]
    assert events[0]["event_type"] == "start" and events[-1]["event_type"] == "end"
