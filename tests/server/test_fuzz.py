"""schemathesis against our own OpenAPI schema, on a live server: no 5xx, and every response
(status code, content type, headers, body) as the schema documents it.

Driven through schemathesis's Python API with Hypothesis (its pytest plugin does not support
pytest 9 yet)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40


def test_the_api_answers_every_generated_request_as_documented(start_server):
    server = start_server(max_queued_tasks=10_000)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err raises here: the schema must load
        tried.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            exercise()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
            failures.append(f"{operation.label}: {exc}"[:3000])
    assert len(tried) >= 12, tried
    assert not failures, "\n\n".join(failures)
