"""What real OpenAI-compatible servers answer, as the OpenAI client raises it: a refused response
format is recognised by what the server says on any status, and never retried; every remote call
carries the output cap; an answer cut off at the cap is a gap the check reports."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from delivery.documents.structure import CUT_OFF_NOTE, check
from delivery.llm.providers import make_llm_factory
from delivery.llm.remote import RetryingOpenAICompletion, is_transient, rejects_form
from delivery.settings import Settings
from delivery.tasks.records import TaskRecord

# llama-cpp-python 0.3.36's server (`python -m llama_cpp.server`), asked for a json_schema
# response format: its answer, byte for byte but for the install path in its traceback line.
LLAMA_CPP_SERVER_500 = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': "
        "\"'text' or 'json_object'\"}}\n\n  File \"/venv/lib/python3.11/site-packages/llama_cpp/server/app.py\", "
        "line 376, in create_chat_completion\n    POST /v1/chat/completions",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}
OPENAI_400 = {
    "error": {
        "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": None,
    }
}
# FastAPI's own answer to a request its model refuses (a server without llama-cpp's error wrapper)
FASTAPI_422 = {
    "detail": [
        {
            "type": "literal_error",
            "loc": ["body", "response_format", "type"],
            "msg": "Input should be 'text' or 'json_object'",
            "input": "json_schema",
        }
    ]
}


def server_error(status: int, body: Any) -> openai.APIError:
    """The exception the OpenAI client raises when a server answers `status` with `body`."""
    transport = httpx.MockTransport(lambda _request: httpx.Response(status, json=body))
    client = openai.OpenAI(
        base_url="http://server/v1", api_key="k", max_retries=0, http_client=httpx.Client(transport=transport)
    )
    with pytest.raises(openai.APIError) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return raised.value


@pytest.mark.parametrize(
    "status, body", [(500, LLAMA_CPP_SERVER_500), (400, OPENAI_400), (422, FASTAPI_422)], ids=["500", "400", "422"]
)
def test_a_refused_response_format_is_recognised_on_any_status_and_not_retried(status, body):
    exc = server_error(status, body)
    assert exc.status_code == status  # type: ignore[attr-defined]
    assert rejects_form(exc)
    assert not is_transient(exc)  # it would fail the same way again: Markdown at once instead


@pytest.mark.parametrize(
    "status, body, transient",
    [
        (500, {"error": {"message": "CUDA error: out of memory", "type": "internal_server_error"}}, True),
        (503, {"error": {"message": "Service Unavailable"}}, True),
        (429, {"error": {"message": "Rate limit reached for requests"}}, True),
        (400, {"error": {"message": "This model's maximum context length is 4096 tokens."}}, False),
        (404, {"error": {"message": "The model `m` does not exist."}}, False),
    ],
    ids=["500", "503", "429", "400", "404"],
)
def test_other_errors_are_not_taken_for_a_refused_format(status, body, transient):
    exc = server_error(status, body)
    assert not rejects_form(exc)
    assert is_transient(exc) is transient


def test_an_error_without_an_answer_is_not_a_refused_format():
    request = httpx.Request("POST", "http://server/v1/chat/completions?response_format=json_schema")
    exc = openai.APIConnectionError(message="Connection error: response_format", request=request)
    assert not rejects_form(exc) and is_transient(exc)


def test_every_remote_call_carries_the_output_cap():
    settings = Settings(_env_file=None, llm_provider="openai", openai_base_url="http://server/v1", llm_max_tokens=321)
    record = TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en")
    llm = make_llm_factory(settings)("ProductManager", record)
    assert isinstance(llm, RetryingOpenAICompletion)
    params = llm._prepare_completion_params([{"role": "user", "content": "hi"}])  # what CrewAI sends
    assert params["max_tokens"] == 321 and params["stream"] is True
    assert Settings(_env_file=None).llm_max_tokens == 4096


def test_an_answer_cut_off_at_the_cap_is_a_gap_the_check_reports_first():
    complete = "# Delivery review\n## Findings\n- All covered.\n## Risks\n- Scope.\nVerdict: GO\n"
    assert check("delivery_review", complete, []) == []
    cut = complete + "\n" + CUT_OFF_NOTE.format(cap=512)
    gaps = check("delivery_review", cut, [])
    assert gaps[0] == (
        "the answer was cut off at the output cap of 512 tokens before it ended: write the whole document more briefly"
    )
    # The note is the document's last line, so the review's verdict is no longer its last: a gap too.
    assert len(gaps) == 2 and "Verdict" in gaps[1]
