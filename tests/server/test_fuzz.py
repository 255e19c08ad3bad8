"""Every input a client can send, on a live server, on both stores, with API keys off and on.

Two fuzzers, both randomised on every run (Hypothesis prints the seed of a failing example):
- schemathesis against our own OpenAPI schema, valid and invalid data, on generated task ids
  and on a real task's id: no 5xx, every answer as the schema documents it;
- our own generator of what schemathesis does not produce: every string JSON can express (NUL,
  unpaired surrogates, line separators, the last plane), numbers past every limit, bodies that
  are not UTF-8, and any bytes in headers and query values; it follows the links of run_task to
  the task's own routes. Each input is stored and replayed exactly or refused with a 4xx that
  names the field.

Driven through schemathesis's Python API with Hypothesis (its pytest plugin does not support
pytest 9 yet)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import run_task, wait_finished
from tests.support.real_services import fresh_postgres_database
from tests.support.server_process import Server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40
KEY = "fuzz-key-0123456789"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass
class Target:
    server: Server
    headers: dict[str, str]  # the valid API key, when keys are on
    finished_task: str  # a task that succeeded: every task route has something to show

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=self.headers, timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql-with-keys"])
def target(request: pytest.FixtureRequest, start_server: Callable[..., Server]) -> Iterator[Target]:
    if request.param == "sqlite":
        server = start_server(max_queued_tasks=10_000)
        yield _target(server, {})
        return
    with fresh_postgres_database() as url:
        server = start_server(max_queued_tasks=10_000, database_url=url, api_keys=KEY)
        yield _target(server, {"Authorization": f"Bearer {KEY}"})
        server.stop()


def _target(server: Server, headers: dict[str, str]) -> Target:
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        task_id = run_task(c)
        assert wait_finished(c, task_id)["status"] == "succeeded"
    return Target(server, headers, task_id)


# -- schemathesis: the schema's own inputs ---------------------------------------------------------


def test_the_api_answers_every_generated_request_as_documented(target: Target):
    schema = schemathesis.openapi.from_url(target.server.url + "/openapi.json", headers=target.headers)
    failures: list[str] = []
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err raises here: the schema must load
        tried.append(operation.label)
        real_task = {"task_id": target.finished_task} if "{task_id}" in operation.path else None
        for mode in GenerationMode:
            for path_parameters in [None, real_task] if real_task else [None]:
                strategy = operation.as_strategy(mode, path_parameters=path_parameters)

                @given(case=strategy)
                @FUZZ
                def exercise(case) -> None:
                    case.call_and_validate(headers=target.headers, checks=CHECKS, timeout=30)

                try:
                    exercise()
                except Unsatisfiable:  # no invalid value exists (a route with only a free-text id)
                    continue
                except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
                    failures.append(f"{operation.label} ({mode.value}, {path_parameters}): {exc}"[:3000])
    assert len(tried) >= 12, tried
    assert not failures, "\n\n".join(failures)


# -- what a client can put on the wire -----------------------------------------------------------

ODD_CHARACTERS = st.sampled_from(
    [
        "\x00",  # PostgreSQL cannot store it
        "\ud800",  # unpaired surrogates: not text in any encoding
        "\udfff",
        "\x01",
        "\x1b",
        "\x7f",
        "\x85",
        "\u2028",  # line and paragraph separators: JavaScript's line breaks
        "\u2029",
        "\ufeff",
        "\uffff",
        "\U0010ffff",
        "\U0001f600",
        "\r\n",
        "\r",
        "\t",
        "\\",
        '"',
        "</script>",
        "开发",
        "é",
        "%00",
        "data: x\n\n",
        "id: 9\n",
    ]
)
TEXT = st.lists(st.one_of(st.characters(exclude_categories=()), ODD_CHARACTERS), max_size=24).map("".join)
LONG_TEXT = st.integers(19_990, 20_010).map(lambda n: "长" * n)  # around the 20,000-character limit
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 10**9, 10**9 + 1, 2**63, 10**4000]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -0.0, 5e-324]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
REQUIREMENTS = st.one_of(TEXT, TEXT.map(lambda t: "Build " + t), LONG_TEXT, JSON_VALUES)
BUDGETS = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"max_tokens": st.one_of(NUMBERS, JSON_VALUES), "max_cost": NUMBERS}),
    JSON_VALUES,
)
RUN_TASK_BODIES = st.fixed_dictionaries(
    {"user_requirement": REQUIREMENTS},
    optional={"skip_confirmation": st.one_of(st.booleans(), JSON_VALUES), "budget": BUDGETS},
)
# What h11 lets a client send in a header value: visible ASCII, spaces inside, and any byte >= 0x80.
HEADER_BYTES = st.one_of(
    st.lists(st.integers(0x21, 0xFF).filter(lambda b: b != 0x7F), min_size=1, max_size=40).map(bytes),
    st.sampled_from([b"\xd9\xa1\xd9\xa2", "²".encode(), b"9" * 20, b"9" * 4000, b"-1", b"1 2", b"0x10", b"1e3"]),
)
QUERY_VALUES = st.one_of(TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")), HEADER_BYTES, st.binary(max_size=20))


def _json_body(value: Any) -> bytes:
    # ensure_ascii writes every character as an escape, lone surrogates included: exactly what
    # a client may send even though no encoder of text would produce it.
    return json.dumps(value, ensure_ascii=True).encode()


def _as_read(value: Any) -> Any:
    """What a JSON reader makes of `_json_body(value)`: a high surrogate escaped right before a
    low one is one character (the pair "\\ud800\\udc00" is U+10000), as JSON says."""
    return json.loads(_json_body(value))


def _named(response: httpx.Response, *fields: str) -> bool:
    """A refusal names one of these fields (or the body as a whole)."""
    detail = response.json()["detail"]
    if isinstance(detail, list):
        return all({str(part) for part in error["loc"]} & {"body", *fields} for error in detail)
    return any(f in detail for f in fields) or "body" in detail


def _assert_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str | list), response.text


@given(body=st.one_of(RUN_TASK_BODIES, JSON_VALUES))
@example(body={"user_requirement": "\ud800\udc00"})  # an escaped surrogate pair: one character when read
@FUZZ
def _run_task_examples(target: Target, body: Any) -> None:
    with target.client() as c:
        r = c.post("/api/run_task", content=_json_body(body), headers={"Content-Type": "application/json"})
        _assert_answered(r)
        if r.status_code == 202:
            sent = _as_read(body)["user_requirement"]
            stored = c.get(f"/api/task/{r.json()['task_id']}/status").json()["requirement"]
            assert stored == sent.strip(), (stored, sent)
        else:
            assert r.status_code in (400, 413, 422), r.text
            assert _named(r, "user_requirement", "skip_confirmation", "budget", "max_tokens", "max_cost")


def test_every_body_run_task_can_get_is_stored_exactly_or_refused_naming_the_field(target: Target):
    _run_task_examples(target)


@given(raw=st.one_of(st.binary(max_size=64), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))))
@FUZZ
def _raw_bodies(target: Target, raw: bytes) -> None:
    with target.client() as c:
        for path in ("/api/run_task", f"/api/task/{target.finished_task}/confirm"):
            r = c.post(path, content=raw, headers={"Content-Type": "application/json"})
            _assert_answered(r)
            assert r.status_code in (400, 409, 422), (path, r.status_code, r.text)


def test_bodies_that_are_not_json_text_are_refused_with_what_to_send(target: Target):
    _raw_bodies(target)


@given(feedback=st.one_of(TEXT, st.integers(4990, 5010).map(lambda n: "x" * n), JSON_VALUES), approved=JSON_VALUES)
@FUZZ
def _confirm_examples(target: Target, task_id: str, feedback: Any, approved: Any) -> None:
    with target.client() as c:
        body = {"approved": approved, "feedback": feedback}
        r = c.post(
            f"/api/task/{task_id}/confirm", content=_json_body(body), headers={"Content-Type": "application/json"}
        )
        _assert_answered(r)
        if r.status_code != 200:
            assert r.status_code in (409, 422), r.text
            assert r.status_code == 409 or _named(r, "approved", "feedback")
            return
        if r.json()["message"].startswith("Changes requested"):  # (an approval ignores feedback)
            # Sent back for revision: the feedback is in the log exactly as sent.
            confirmed = [e for e in _replay(c, task_id) if e["event_type"] == "confirmed"]
            sent = _as_read(feedback).strip()
            assert any(e["content"] == f"Changes requested: {sent}" for e in confirmed), feedback


def test_confirmation_stores_any_feedback_exactly_or_refuses_naming_the_field(target: Target):
    with target.client() as c:
        r = c.post("/api/run_task", json={"user_requirement": "A wiki", "skip_confirmation": False})
        task_id = r.json()["task_id"]
        _confirm_examples(target, task_id)
        c.post(f"/api/task/{task_id}/cancel")


def _replay(c: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    events = []
    with c.stream("GET", f"/api/stream/{task_id}", timeout=5) as r:
        assert r.status_code == 200
        try:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        except httpx.ReadTimeout:  # a live task: what was there is enough
            pass
    return events


def _quoted(value: bytes) -> str:
    return urllib.parse.quote(value, safe="")


@given(
    name=QUERY_VALUES,
    number=QUERY_VALUES,
    query=st.dictionaries(
        st.sampled_from(["format", "from", "to", "after", "token", "limit", "status", "before"]),
        QUERY_VALUES,
        max_size=3,
    ),
    header=st.tuples(st.sampled_from(["Last-Event-ID", "Authorization", "X-API-Key", "Idempotency-Key"]), HEADER_BYTES),
)
@FUZZ
def _task_route_examples(
    target: Target, name: bytes, number: bytes, query: dict[str, bytes], header: tuple[str, bytes]
) -> None:
    t = target.finished_task
    paths = [
        f"/api/task/{t}/status",
        f"/api/task/{t}/result",
        f"/api/task/{t}/deliverables",
        f"/api/task/{t}/deliverables/{_quoted(name)}",
        f"/api/task/{t}/deliverables/requirements_analysis/versions/{_quoted(number)}",
        f"/api/task/{t}/deliverables/{_quoted(name)}/diff",
        f"/api/task/{_quoted(name)}/status",
        f"/api/stream/{t}",
        f"/api/stream/{_quoted(name)}",
        "/api/tasks",
    ]
    query_string = "&".join(f"{k}={_quoted(v)}" for k, v in query.items())
    header_name, header_value = header
    headers = {name.encode(): value.encode() for name, value in target.headers.items()}
    if header_name == "X-API-Key":  # Authorization would win over it
        headers.pop(b"Authorization", None)
    headers[header_name.encode()] = header_value
    with httpx.Client(base_url=target.server.url, timeout=10) as c:
        for path in paths:
            r = c.send(c.build_request("GET", f"{path}?{query_string}", headers=headers), stream=True)
            try:
                assert r.status_code < 500, (path, query, header, r.status_code, r.read()[:300])
                if r.status_code >= 400:
                    detail = json.loads(r.read())["detail"]
                    assert detail, (path, r.status_code)
                elif path.startswith("/api/stream/"):
                    # A finished task's replay ends by itself, whatever the resume point.
                    body = r.read().decode()
                    assert body.count("event: end") <= 1
            finally:
                r.close()
        r = c.post(f"/api/task/{t}/cancel", headers=headers)
        _assert_answered(r)


def test_task_routes_answer_any_bytes_in_paths_queries_and_headers(target: Target):
    _task_route_examples(target)
