"""The README's client examples, run as written against a real server: the Python example (also
through a connection cut mid-run) and the CLI commands (the interactive one under a
pseudo-terminal)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.api import AGENTS
from tests.support.server_process import ROOT, Server
from tests.support.sse_client import read_stream
from tests.support.tcp_proxy import CuttableProxy
from tests.support.terminal import DELIVERY, FILES, environment, finish, task_id_of, terminal


def example(name: str) -> str:
    """The fenced block that follows `<!-- example: name ... -->` in README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {name}\b[^>]*-->\n```\w+\n(.*?)```", readme, re.DOTALL)
    assert found, f"README.md has no example marked '{name}'"
    return found.group(1)


@pytest.fixture(scope="module")
def readme_server(start_server: Callable[..., Server]) -> Server:
    return start_server(scripted_token_delay_ms=2)


def run_python_example(url: str, cwd: Path, on_line: Callable[[str], None] = lambda line: None) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", example("python")],
        env=environment(url),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        on_line(line)
    assert process.wait(120) == 0, process.stderr.read()
    return lines


def check_python_output(lines: list[str], server: Server, cwd: Path) -> None:
    task_id = lines[0].split()[1]
    events = read_stream(server.url, task_id, timeout=60).events
    # Every event printed once, in order: tokens inline, the others as one line each.
    printed = "".join(lines[1:])
    expected = ""
    for event in events:
        if event["event_type"] == "thought":
            expected += event["content"]
        else:
            expected += f"\n[{event['agent_name']}] {event['event_type']}: {event['content'][:60]!r}\n"
    assert printed == expected + "saved in deliverables\n"
    assert [e["agent_name"] for e in events if e["event_type"] == "agent_start"] == AGENTS
    assert [e["event_type"] for e in events if e["event_type"] in ("awaiting_confirmation", "confirmed", "end")] == [
        "awaiting_confirmation",
        "confirmed",
        "end",
    ]
    assert sorted(p.name for p in (cwd / "deliverables").glob("*.md")) == FILES


def test_the_python_example_runs_as_written(readme_server: Server, tmp_path: Path) -> None:
    lines = run_python_example(readme_server.url, tmp_path)
    check_python_output(lines, readme_server, tmp_path)


def test_the_python_example_survives_a_connection_cut(readme_server: Server, tmp_path: Path) -> None:
    proxy = CuttableProxy(readme_server.port)
    cut = threading.Event()

    def cut_once(line: str) -> None:
        if not cut.is_set() and line.startswith("[QAEngineer] agent_start"):
            cut.set()
            assert proxy.cut() >= 1

    try:
        lines = run_python_example(proxy.url, tmp_path, cut_once)
    finally:
        proxy.close()
    assert cut.is_set() and len(proxy.sse_ids) >= 2
    check_python_output(lines, readme_server, tmp_path)


def cli_commands() -> list[list[str]]:
    return [shlex.split(line) for line in example("cli").splitlines() if line.startswith("delivery ")]


def test_the_cli_examples_run_as_written(readme_server: Server, tmp_path: Path) -> None:
    interactive, scripted = cli_commands()
    assert ">" in scripted  # the second writes its events to a file
    child = terminal(readme_server.url, *interactive[1:], cwd=tmp_path)
    task_id = task_id_of(child)
    child.expect("Approve it, request changes, or leave it waiting")
    child.sendline("approve")
    child.expect("Verdict: GO")
    assert finish(child) == 0
    assert sorted(p.name for p in (tmp_path / f"delivery-{task_id[:8]}").glob("*.md")) == FILES

    line = shlex.join(scripted[: scripted.index(">")]).replace("delivery", shlex.quote(DELIVERY), 1)
    shell = subprocess.run(
        f"{line} > {shlex.quote(scripted[-1])}",
        shell=True,
        check=False,
        env=environment(readme_server.url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0 and shell.stderr == ""
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event_type"] == "end"
    status = httpx.get(f"{readme_server.url}/api/task/{events[0]['task_id']}/status").json()
    assert status["status"] == "succeeded" and status["last_sequence"] == len(events)
