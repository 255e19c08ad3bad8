"""Provider selection, configuration errors and what a failing provider looks like to a viewer."""

from __future__ import annotations

import httpx
import pytest

from agents_config import detect_language
from server_process import free_port
from llm_providers import ProviderConfigError, check_provider, describe_model, resolve_provider
from scripted_provider import requirement_items, scripted_document, tokenize
from settings import LLMProvider, Settings
from sse_client import read_stream
from test_api import run_task


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_auto_picks_dashscope_with_a_key_and_the_local_model_without():
    assert resolve_provider(settings(llm_provider="auto")) is LLMProvider.local
    assert resolve_provider(settings(llm_provider="auto", dashscope_api_key="sk-x")) is LLMProvider.dashscope
    assert resolve_provider(settings(llm_provider="scripted", dashscope_api_key="sk-x")) is LLMProvider.scripted
    assert describe_model(settings(llm_provider="auto", dashscope_api_key="sk-x")) == "dashscope:qwen-plus"
    assert describe_model(settings(llm_provider="openai", openai_base_url="http://h/v1",
                                   llm_model="llama3")) == "openai:llama3@http://h/v1"


def test_local_model_file_ships_with_the_package():
    check_provider(settings(llm_provider="local"))


@pytest.mark.parametrize("values, fragment", [
    ({"llm_provider": "dashscope"}, "DASHSCOPE_API_KEY"),
    ({"llm_provider": "openai"}, "OPENAI_BASE_URL"),
    ({"llm_provider": "local", "local_model_path": "/nonexistent.gguf"}, "LOCAL_MODEL_PATH"),
])
def test_misconfigured_providers_say_what_to_set(values, fragment):
    with pytest.raises(ProviderConfigError, match=fragment):
        check_provider(settings(**values))


def test_unknown_provider_name_is_rejected():
    with pytest.raises(ValueError):
        settings(llm_provider="gpt-nine")


def test_an_unreachable_endpoint_fails_the_task_with_an_actionable_error(start_server):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    server = start_server(llm_provider="openai", openai_base_url=dead, llm_model="m", llm_timeout_s=5)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c)
        result = read_stream(server.url, task_id, timeout=90)
        assert result.closed_by_server
        events = result.events
        assert [e["event_type"] for e in events][0] == "start"
        assert events[-1]["event_type"] == "error"
        assert sum(e["event_type"] in ("end", "error") for e in events) == 1
        assert "Could not connect" in events[-1]["content"] and "OPENAI_BASE_URL" in events[-1]["content"]
        status = c.get(f"/api/task/{task_id}/status").json()
        assert status["status"] == "failed" and status["error"] == events[-1]["content"]
        assert c.get(f"/api/task/{task_id}/result").json()["status"] == "failed"


def test_language_detection():
    assert detect_language("开发一个简单的待办事项应用") == "zh"
    assert detect_language("开发一个 todo app,支持 REST API 和 OAuth 登录") == "zh"
    assert detect_language("Build a todo app") == "en"
    assert detect_language("Build a todo app for 李") == "en"


def test_scripted_documents_are_deterministic_labelled_and_traceable():
    req = "Build a shop with a cart, payments and order history"
    items = requirement_items(req)
    assert len(items) >= 3
    docs = {name: scripted_document(name, req, "en") for name in
            ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]}
    assert docs == {name: scripted_document(name, req, "en") for name in docs}
    for n in range(1, len(items) + 1):
        assert f"REQ-{n}" in docs["ProductManager"] and f"TC-{n} | REQ-{n}" in docs["QAEngineer"]
        assert f"serves REQ-{n}" in docs["SoftwareDeveloper"]
    assert all("scripted provider" in d for d in docs.values())
    assert "".join(tokenize(docs["QAEngineer"])) == docs["QAEngineer"]
    assert tokenize("开发 app") == ["开", "发", " ", "app"]


def test_transient_model_failures_are_retried_then_the_task_succeeds(start_server):
    from fake_openai import FakeOpenAI

    fake = FakeOpenAI(fail_first=2)  # two 503s, then answers
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="fake",
                              llm_max_retries=3, llm_retry_base_s=0.05)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", events[-1]
        assert fake.requests >= 2 + 4  # the two failures, then one call per agent at least
        assert "model call failed" in server.log_text()
    finally:
        fake.stop()


def test_a_model_that_keeps_failing_ends_the_task_with_a_clear_error(start_server):
    from fake_openai import FakeOpenAI

    fake = FakeOpenAI(fail_first=10**6)
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="fake",
                              llm_max_retries=2, llm_retry_base_s=0.05)
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
