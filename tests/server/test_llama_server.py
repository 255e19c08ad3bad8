"""The remote path against a real OpenAI-compatible server that is not ours: llama-cpp-python's
own (`python -m llama_cpp.server`) on the bundled SmolLM2 GGUF, shared by the module's tests.

That server refuses the JSON-schema response format with a 500, and the 135M model, given
CrewAI's prompts without a grammar, rarely stops by itself. Kept short through the settings:
every call is capped at CAP tokens (LLM_MAX_TOKENS), so each answer is cut off, which the check
reports and the fix loop answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.api import AGENTS, assert_well_formed_run, run_task
from tests.support.llama_server import LlamaServer
from tests.support.sse_client import read_stream

CAP = 32  # LLM_MAX_TOKENS in these tests: a few seconds per call on 2 cores
CUT_OFF_GAP = (
    f"the answer was cut off at the output cap of {CAP} tokens before it ended: write the whole document more briefly"
)
DOCUMENTS = ["delivery_review", "requirements_analysis", "technical_design", "test_plan"]
REFUSED = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 500')


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "llama_server.log")
    yield server
    server.stop()


def run_to_end(start_server: Any, llama: LlamaServer, **settings: Any) -> tuple[Any, list[dict], dict]:
    """One task on the service (a real uvicorn server) against the llama server: its events, run to
    `end`, and its result."""
    server = start_server(
        llm_provider="openai", openai_base_url=llama.url, llm_model="smollm2", llm_max_tokens=CAP, **settings
    )
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a todo app")
        stream = read_stream(server.url, task_id, timeout=240)
        assert stream.events[-1]["event_type"] == "end", stream.events[-3:]
        assert_well_formed_run(stream, task_id)
        assert c.get(f"/api/task/{task_id}/status").json()["status"] == "succeeded"
        result = c.get(f"/api/task/{task_id}/result").json()
    assert sorted(result["deliverables"]) == DOCUMENTS
    return server, stream.events, result


def tokens_per_call(events: list[dict], agent: str) -> list[int]:
    """The tokens streamed by each of `agent`'s model calls (each begins with an `action`; the
    llama server sends one token per chunk)."""
    counts: list[int] = []
    for e in events:
        if e["agent_name"] != agent:
            continue
        if e["event_type"] == "action":
            counts.append(0)
        elif e["event_type"] == "thought":
            counts[-1] += 1
    return counts


def test_structured_output_refused_with_a_500_falls_back_to_markdown_at_once(start_server, llama):
    refused_before = len(REFUSED.findall(llama.log_text()))
    server, events, result = run_to_end(start_server, llama, structured_output=True, max_fix_rounds=0)
    log = server.log_text()
    # One request with the form, refused with a 500 naming response_format, not retried; then Markdown.
    assert len(REFUSED.findall(llama.log_text())) == refused_before + 1
    assert log.count("refused a JSON-schema response format") == 1 and "model call failed" not in log
    assert "'loc': ('body', 'response_format', 'type')" in log
    # The refused call streamed nothing; every answer stopped at the cap, and the check says so.
    assert tokens_per_call(events, "ProductManager")[0] == 0
    for agent in AGENTS:
        assert max(tokens_per_call(events, agent)) == CAP
    checks = [e["metadata"] for e in events if e["event_type"] == "check"]
    assert [c["gaps"][0] for c in checks] == [CUT_OFF_GAP] * 4 and all(c["accepted"] for c in checks)
    assert log.count(f"stopped at the output cap of {CAP} tokens (LLM_MAX_TOKENS)") == 4
    # A cut document keeps saying so, and the verdict follows.
    for text in result["deliverables"].values():
        assert f"> Cut off: the model reached its output cap of {CAP} tokens (LLM_MAX_TOKENS)" in text
    assert result["traceability"]["verdict"] == "NO-GO"


def test_without_structured_output_a_capped_answer_goes_through_the_fix_loop(start_server, llama):
    refused_before = len(REFUSED.findall(llama.log_text()))
    server, events, result = run_to_end(start_server, llama, structured_output=False, max_fix_rounds=1)
    assert len(REFUSED.findall(llama.log_text())) == refused_before  # the form was never asked for
    assert "refused a JSON-schema" not in server.log_text()
    for agent in AGENTS:
        # a first draft and one fix round, each cut off at the cap (without it: until the context is full)
        assert tokens_per_call(events, agent) == [CAP, CAP]
        first, fix = (e["metadata"] for e in events if e["event_type"] == "check" and e["agent_name"] == agent)
        assert (first["fix_round"], first["accepted"], first["gaps"][0]) == (0, False, CUT_OFF_GAP)
        assert (fix["fix_round"], fix["accepted"], fix["gaps"][0]) == (1, True, CUT_OFF_GAP)
    assert result["traceability"]["verdict"] == "NO-GO"
