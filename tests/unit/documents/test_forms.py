"""The JSON forms remote models fill, and the Markdown code renders from them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from delivery.documents import forms
from delivery.documents.structure import ANALYSIS, DESIGN, REVIEW, TEST_PLAN, check, requirement_ids
from tests.support.fake_openai import filled

ALL = [ANALYSIS, TEST_PLAN, DESIGN, REVIEW]


def strict_violations(schema: dict[str, Any], path: str = "$") -> list[str]:
    """What OpenAI's strict mode would refuse: an object not closed or with optional properties."""
    problems = []
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path} allows additional properties")
        if sorted(schema.get("required", [])) != sorted(schema["properties"]):
            problems.append(f"{path} has optional properties")
        for name, sub in schema["properties"].items():
            problems += strict_violations(sub, f"{path}.{name}")
    if schema.get("type") == "array":
        problems += strict_violations(schema["items"], f"{path}[]")
    return problems


@pytest.mark.parametrize(
    ("deliverable", "requirements"),
    [(ANALYSIS, []), (REVIEW, []), *((d, ["REQ-1", "REQ-2", "REQ-3"]) for d in ALL)],
)
def test_every_form_is_strict_and_its_filled_form_renders_a_complete_document(deliverable, requirements):
    fmt = forms.response_format(deliverable, requirements)
    assert fmt is not None and fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == deliverable
    schema = fmt["json_schema"]["schema"]
    assert strict_violations(schema) == []
    document = forms.render(deliverable, json.dumps(filled(schema)))
    assert document is not None
    assert check(deliverable, document, requirements) == []


def test_references_are_limited_to_the_approved_requirements():
    design = forms.schema_for(DESIGN, ["REQ-1", "REQ-2"])
    assert design is not None
    assert design["properties"]["components"]["items"]["properties"]["serves"]["items"] == {
        "type": "string",
        "enum": ["REQ-1", "REQ-2"],
    }
    plan = forms.schema_for(TEST_PLAN, ["REQ-1", "REQ-2"])
    assert plan is not None and plan["properties"]["cases_by_requirement"]["required"] == ["REQ-1", "REQ-2"]


def test_code_numbers_the_items_whatever_the_model_wrote():
    answer = {
        "summary": "A shop.",
        "requirements": [
            {"title": "Cart", "description": "Add items.", "acceptance_criteria": ["Items can be added"]},
            {"title": "Pay", "description": "Pay by card.", "acceptance_criteria": ["A card payment succeeds"]},
        ],
        "assumptions": ["Cards only"],
    }
    document = forms.render(ANALYSIS, json.dumps(answer))
    assert document == (
        "# Requirements analysis\n\n## Summary\n\nA shop.\n\n## Requirements\n\n"
        "### REQ-1: Cart\n\nAdd items.\n\nAcceptance criteria:\n- Items can be added\n\n"
        "### REQ-2: Pay\n\nPay by card.\n\nAcceptance criteria:\n- A card payment succeeds\n\n"
        "## Assumptions\n\n- Cards only\n"
    )
    assert requirement_ids(document) == ["REQ-1", "REQ-2"]


def test_a_heading_inside_a_field_stays_text_of_that_field():
    answer = {
        "summary": "s",
        "requirements": [{"title": "A\n### REQ-7: injected", "description": "d", "acceptance_criteria": ["c"]}],
        "assumptions": [],
    }
    document = forms.render(ANALYSIS, json.dumps(answer))
    assert document is not None and requirement_ids(document) == ["REQ-1"]
    assert "### REQ-1: A ### REQ-7: injected" in document


def test_gaps_the_form_cannot_forbid_are_left_for_the_check():
    empty_cases = {"cases_by_requirement": {"REQ-1": [], "REQ-2": [{"title": "t", "steps": ["s"], "expected": "e"}]}}
    document = forms.render(TEST_PLAN, json.dumps(empty_cases))
    assert document is not None
    assert check(TEST_PLAN, document, ["REQ-1", "REQ-2"]) == ["REQ-1 has no test case (no TC-n verifies it)"]


def test_chinese_documents_get_chinese_labels_that_the_check_reads():
    plan = forms.schema_for(TEST_PLAN, ["REQ-1"])
    assert plan is not None
    document = forms.render(TEST_PLAN, json.dumps(filled(plan)), language="zh")
    assert document is not None and document.startswith("# 测试计划\n") and "验证： REQ-1" in document
    assert check(TEST_PLAN, document, ["REQ-1"]) == []


@pytest.mark.parametrize("answer", ["# Test plan\n\n### TC-1: Markdown, not JSON", "[1, 2]", "", '{"cases": [', "null"])
def test_an_answer_that_is_not_a_json_object_is_not_a_form(answer):
    assert forms.render(TEST_PLAN, answer) is None


def test_a_fenced_json_answer_is_read():
    answer = '```json\n{"findings": ["f"], "risks": ["r"], "verdict": "GO"}\n```'
    assert forms.render(REVIEW, answer) == "# Delivery review\n\n## Findings\n\n- f\n\n## Risks\n\n- r\n\nVerdict: GO\n"


def test_fields_of_the_wrong_type_are_ignored_not_fatal():
    answer = {"architecture": 5, "components": [{"name": None, "serves": "REQ-1", "description": []}, "x"], "api": {}}
    document = forms.render(DESIGN, json.dumps(answer))
    assert document is not None and "### C-1: \n" in document
    assert check(DESIGN, document, ["REQ-1"]) == [
        'C-1 has no "Serves:" line naming the REQ-n it serves',
        "REQ-1 has no design element (no element serves it)",
    ]
