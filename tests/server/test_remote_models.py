"""What a remote OpenAI-compatible model looks like to viewers when it is unreachable or fails,
against a real server and a fake endpoint that fails on purpose."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from delivery.crew.compat import FINAL_ANSWER_PREFIX
from delivery.llm.usage import estimate_tokens
from tests.support.api import run_task
from tests.support.fake_openai import ANSWER, PROMPT_TOKENS, FakeOpenAI, Reply
from tests.support.real_services import fresh_postgres_database
from tests.support.server_process import free_port
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


def test_an_unreachable_endpoint_fails_the_task_with_an_actionable_error(start_server):
    port = free_port()
    dead = f"http://user:hunter2@127.0.0.1:{port}/v1"  # nothing listens here
    server = start_server(llm_provider="openai", openai_base_url=dead, llm_model="m", llm_timeout_s=5)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        # The password written into OPENAI_BASE_URL shows nowhere: /healthz is open by design.
        assert (
            c.get("/healthz").json()["provider"] == f"openai:m@http://***@127.0.0.1:{dead.rsplit(':', maxsplit=1)[-1]}"
        )
        task_id = run_task(c)
        result = read_stream(server.url, task_id, timeout=90)
        assert result.closed_by_server
        events = result.events
        assert next(e["event_type"] for e in events) == "start"
        assert events[-1]["event_type"] == "error"
        assert sum(e["event_type"] in ("end", "error") for e in events) == 1
        assert "Could not connect" in events[-1]["content"] and "OPENAI_BASE_URL" in events[-1]["content"]
        status = c.get(f"/api/task/{task_id}/status").json()
        assert status["status"] == "failed" and status["error"] == events[-1]["content"]
        assert c.get(f"/api/task/{task_id}/result").json()["status"] == "failed"
    assert "hunter2" not in str(result.events) and "hunter2" not in server.log_text()


def test_transient_model_failures_are_retried_then_the_task_succeeds(start_server):
    fake = FakeOpenAI(fail_first=2)  # two 503s, then answers
    try:
        server = start_server(
            llm_provider="openai", openai_base_url=fake.url, llm_model="fake", llm_max_retries=3, llm_retry_base_s=0.05
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", events[-1]
        assert fake.requests >= 2 + 4  # the two failures, then one call per agent at least
        assert "model call failed" in server.log_text()
    finally:
        fake.stop()


def test_a_model_that_keeps_failing_ends_the_task_with_a_clear_error(start_server):
    fake = FakeOpenAI(fail_first=10**6)
    try:
        server = start_server(
            llm_provider="openai", openai_base_url=fake.url, llm_model="fake", llm_max_retries=2, llm_retry_base_s=0.05
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        last = events[-1]
        assert last["event_type"] == "error"
        assert "Tried 3 times with backoff (LLM_MAX_RETRIES=2)" in last["content"]
        assert "InternalServerError" in last["content"]
        assert fake.requests == 3  # no retries beyond the setting (the SDK's own are off)
    finally:
        fake.stop()


def test_a_server_with_structured_output_fills_each_documents_form_and_the_package_is_go(start_server):
    fake = FakeOpenAI(forms="fill")  # holds its "model" to the schema, filling in every field
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="fake")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c, "A library catalogue with loans and reminders")
            events = read_stream(server.url, task_id, timeout=120).events
            assert events[-1]["event_type"] == "end", events[-1]
            result = c.get(f"/api/task/{task_id}/result").json()
        forms = [body["response_format"] for body in fake.bodies]
        assert [f["json_schema"]["name"] for f in forms] == [
            "requirements_analysis",
            "test_plan",
            "technical_design",
            "delivery_review",
        ]  # one call per agent: no fix round was needed
        assert all(f["type"] == "json_schema" and f["json_schema"]["strict"] is True for f in forms)
        # the analysis the fake filled has two requirements; the later forms may name only those
        plan = forms[1]["json_schema"]["schema"]["properties"]["cases_by_requirement"]
        assert plan["required"] == ["REQ-1", "REQ-2"]
        serves = forms[2]["json_schema"]["schema"]["properties"]["components"]["items"]["properties"]["serves"]
        assert serves["items"]["enum"] == ["REQ-1", "REQ-2"]
        # what was stored is the Markdown shape, checked by code with no gap
        docs = result["deliverables"]
        assert docs["requirements_analysis"].startswith("# Requirements analysis\n")
        assert "### REQ-2: Filled in by the fake model" in docs["requirements_analysis"]
        assert "### TC-4: Filled in by the fake model\n\nVerifies: REQ-2\n" in docs["test_plan"]
        assert "Serves: REQ-1, REQ-2" in docs["technical_design"]
        assert result["traceability"]["verdict"] == "GO" and result["traceability"]["gaps"] == []
        checks = [e for e in events if e["event_type"] == "check"]
        assert len(checks) == 4 and all(e["metadata"]["gaps"] == [] for e in checks)
    finally:
        fake.stop()


def test_a_server_that_refuses_the_form_is_asked_for_markdown_from_then_on(start_server):
    fake = FakeOpenAI(forms="refuse")
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="fake", max_fix_rounds=0)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", events[-1]
        asked = ["response_format" in body for body in fake.bodies]
        assert asked == [True, False, False, False, False]  # refused once, remembered for the process
        assert "refused a JSON-schema response format" in server.log_text()
        # its Markdown is the document as written; the check says what it lacks, and the verdict follows
        result = httpx.get(f"{server.url}/api/task/{task_id}/result").json()
        assert result["traceability"]["verdict"] == "NO-GO"
    finally:
        fake.stop()


def test_structured_output_can_be_switched_off(start_server):
    fake = FakeOpenAI(forms="fill")
    try:
        server = start_server(
            llm_provider="openai", openai_base_url=fake.url, llm_model="fake", structured_output=False, max_fix_rounds=0
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            events = read_stream(server.url, run_task(c), timeout=120).events
        assert events[-1]["event_type"] == "end"
        assert fake.bodies and not any("response_format" in body for body in fake.bodies)
    finally:
        fake.stop()


CUT_ANSWER = [w + " " for w in (FINAL_ANSWER_PREFIX + "# First try\n\n- REQ-1: this answer breaks off").split(" ")]
SECOND_ANSWER = [
    w + " " for w in (FINAL_ANSWER_PREFIX + "# Analysis\n\n- REQ-1: asked again, said otherwise").split(" ")
]


def test_an_answer_cut_mid_stream_is_retried_as_a_new_call_shown_whole_after_a_retry_event(start_server):
    """The first answer breaks off after 4 chunks; asked again, the model answers differently.
    Viewers see the 4 chunks, a `model_retry` event, then the new answer from its start (nothing
    spliced); the document stored is the new answer; usage and metrics count both attempts."""
    replies = iter([Reply(CUT_ANSWER, cut_after=4), Reply(SECOND_ANSWER)])
    fake = FakeOpenAI(reply=lambda _body: next(replies, None))  # then the usual ANSWER
    try:
        server = start_server(
            llm_provider="openai",
            openai_base_url=fake.url,
            llm_model="fake",
            llm_max_retries=3,
            llm_retry_base_s=0.05,
            structured_output=False,
            max_fix_rounds=0,
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
            result = c.get(f"/api/task/{task_id}/result").json()
            metrics = c.get("/metrics").text
        assert events[-1]["event_type"] == "end", events[-1]
        types = [e["event_type"] for e in events]
        (retry,) = [i for i, t in enumerate(types) if t == "model_retry"]
        announced = events[retry]
        assert announced["agent_name"] == "ProductManager"
        meta = announced["metadata"]
        assert (meta["model"], meta["attempt"], meta["max_attempts"], meta["delay_s"]) == ("fake", 2, 4, 0.05)
        assert meta["error"].startswith("RemoteProtocolError: peer closed connection")
        assert announced["content"].startswith("The model call failed (RemoteProtocolError: peer closed connection")
        assert announced["content"].endswith("attempt 2 of 4 in 0.05 s, its answer from the start")
        # Before it: the cut attempt's own 4 chunks, after its `action`.
        assert types[retry - 5 : retry] == ["action", *["thought"] * 4]
        assert [e["content"] for e in events[retry - 4 : retry]] == CUT_ANSWER[:4]
        # After it: the new attempt's `action`, then its answer from the start, whole.
        assert types[retry + 1] == "action"
        after = events[retry + 2 : types.index("check", retry)]
        assert {e["event_type"] for e in after} == {"thought"}
        live = "".join(e["content"] for e in after)
        assert live == "".join(SECOND_ANSWER)
        document = result["deliverables"]["requirements_analysis"]
        assert document == live.removeprefix(FINAL_ANSWER_PREFIX).strip()
        # Usage counts both attempts: the cut one with what it streamed (estimated), then each answer.
        calls = result["usage"]["calls"]
        assert len(calls) == fake.requests == 5
        cut = calls[0]
        assert cut["agent"] == "ProductManager" and cut["interrupted"] and cut["estimated"]
        assert cut["completion_tokens"] == sum(estimate_tokens(piece) for piece in CUT_ANSWER[:4])
        assert [c["interrupted"] for c in calls[1:]] == [False] * 4
        assert all(c["prompt_tokens"] == PROMPT_TOKENS for c in calls[1:])
        total = result["usage"]["total"]
        assert total["calls"] == 5 and total["total_tokens"] == sum(c["total_tokens"] for c in calls)
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("delivery_llm_tokens_total{")
        )
        assert counted == total["total_tokens"]
        assert "model call failed (peer closed connection without sending complete message body" in server.log_text()
    finally:
        fake.stop()


def test_a_model_that_stalls_before_its_first_token_is_cut_off_after_llm_timeout_s(start_server):
    fake = FakeOpenAI(stall_first=1, stall_s=60)
    try:
        server = start_server(
            llm_provider="openai",
            openai_base_url=fake.url,
            llm_model="fake",
            llm_timeout_s=2,
            llm_max_retries=2,
            llm_retry_base_s=0.05,
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", events[-1]
        assert "model call failed (timed out); retry 1" in server.log_text()
        assert fake.answers >= 2
    finally:
        fake.stop()


def test_two_tasks_stream_from_the_model_at_once_and_cancel_stops_a_stream(start_server):
    fake = FakeOpenAI(chunk_delay_s=0.05)
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="fake")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first, second = run_task(c), run_task(c)
            wait_for(lambda: fake.most_active >= 2, 30, message="two answers streaming at once")
            c.post(f"/api/task/{first}/cancel")
            c.post(f"/api/task/{second}/cancel")
            # The client hangs up on the model: its answers stop being streamed within a chunk or two.
            wait_for(lambda: fake.active == 0, 5, message="the model's streams to be closed")
            answers = fake.answers
            time.sleep(0.5)
            assert fake.answers == answers  # no new call after the cancel
    finally:
        fake.stop()


HOSTILE = "\x00 nul \ud800 lone \udc00 low \u202e bidi \x07 bell \U0001f600 emoji"


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_model_text_no_part_can_carry_is_shown_as_replacement_characters_and_nothing_is_lost(
    start_server, tmp_path, store
):
    """A model streams NUL and unpaired surrogates (JSON escapes in an OpenAI-compatible stream):
    the stream, the archive and the replay all carry them as U+FFFD, every other character as sent,
    and the task ends `end` with its documents stored (PostgreSQL refuses NUL; no encoder can write
    a lone surrogate)."""
    fake = FakeOpenAI(answer=ANSWER + HOSTILE)
    shown = "\ufffd nul \ufffd lone \ufffd low \u202e bidi \x07 bell \U0001f600 emoji"
    with contextlib.ExitStack() as stack:
        stack.callback(fake.stop)
        env = {"llm_provider": "openai", "openai_base_url": fake.url, "llm_model": "fake", "max_fix_rounds": 0}
        if store == "postgresql":
            env["database_url"] = stack.enter_context(fresh_postgres_database())
        server = start_server(structured_output=False, **env)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            live = read_stream(server.url, task_id, timeout=120)
            assert live.events[-1]["event_type"] == "end", live.events[-3:]
            assert c.get(f"/api/task/{task_id}/status").json()["status"] == "succeeded"
            documents = c.get(f"/api/task/{task_id}/result").json()["deliverables"]
        assert live.sequences == list(range(1, len(live.sequences) + 1))
        outputs = [e["content"] for e in live.events if e["event_type"] == "output"]
        assert len(outputs) == 4 and all(shown in text for text in outputs)
        thoughts = "".join(e["content"] for e in live.events if e["event_type"] == "thought")
        assert shown in thoughts and "\x00" not in thoughts
        assert all(shown in text for text in documents.values())
        # After a restart the archive replays exactly what the live viewers saw.
        server.stop()
        again = start_server(port=server.port, data_dir=server.env["DATA_DIR"], structured_output=False, **env)
        assert read_stream(again.url, task_id).events == live.events
