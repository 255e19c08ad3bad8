"""One trace per task, with the SDK's in-memory exporter (in a child process: a tracer provider
is global to a process, and the rest of the suite runs untraced)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.server_process import ROOT


def test_a_task_is_one_trace_of_phases_agents_and_model_calls_with_token_counts():
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.trace_probe"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    task, spans = lines[0]["task"], lines[1:]
    trace_id = task["trace_context"].split("-")[1]
    assert task["start_trace_id"] == trace_id  # in the start event's metadata
    assert {s["trace_id"] for s in spans} == {trace_id}  # everything in one trace
    by_id = {s["span_id"]: s for s in spans}

    def parent(span: dict) -> dict:
        return by_id[span["parent"]]

    (root,) = [s for s in spans if s["parent"] is None]
    assert root["name"] == "task submitted" and root["attributes"]["task.id"] == task["task_id"]
    phases = [s for s in spans if s["name"].startswith("phase ")]
    assert sorted(p["name"] for p in phases) == ["phase analysis", "phase delivery"]
    assert all(p["parent"] == root["span_id"] for p in phases)
    crews = [s for s in spans if s["name"].endswith(".kickoff")]
    assert len(crews) == 2 and all(parent(c)["name"].startswith("phase ") for c in crews)  # OpenInference's
    agents = [s for s in spans if s["name"].endswith("._execute_core")]
    assert [a["attributes"]["graph.node.id"] for a in agents] == [
        "Product Manager",
        "QA Engineer",
        "Software Developer",
        "Delivery Coordinator",
    ]
    assert all(parent(a)["name"].endswith(".kickoff") for a in agents)
    assert all(a["attributes"]["input.value"] == "__REDACTED__" for a in agents)  # no requirement text in traces
    llm = [s for s in spans if s["name"].startswith("llm ")]
    assert len(llm) == 4 and all(parent(s)["name"].endswith("._execute_core") for s in llm)
    for span, call in zip(llm, task["usage_calls"], strict=True):
        attributes = span["attributes"]
        assert attributes["agent.name"] == call["agent"]
        assert attributes["llm.token_count.prompt"] == call["prompt_tokens"]
        assert attributes["llm.token_count.completion"] == call["completion_tokens"]
        assert attributes["llm.usage.estimated"] is False
    assert {s["service"] for s in spans} == {"multi-agent-delivery-api"}
