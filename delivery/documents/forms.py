"""Each deliverable as a JSON form, for remote models that write structured output.

An OpenAI-compatible server that supports `response_format: json_schema` holds the model to the
form while it generates (the remote counterpart of the local model's grammar); code then renders
the filled form as the Markdown shape of structure.py. Numbering is done by code (REQ-n, TC-n,
C-n cannot be skipped or repeated), and references can only name requirements the approved
analysis defines (an `enum`). What the form cannot require (a list left empty, a requirement no
component serves) the check finds, and the fix loop asks again.

The forms are plain JSON Schema in the subset OpenAI's strict mode accepts: every property
required, no additional properties, no length bounds.
"""

from __future__ import annotations

import json
from typing import Any

from delivery.documents.structure import ANALYSIS, DESIGN, REVIEW, TEST_PLAN

# Labels the check reads, in the document's language (structure.py accepts both).
_LABELS = {
    "en": {
        "analysis": "Requirements analysis",
        "summary": "Summary",
        "requirements": "Requirements",
        "criteria": "Acceptance criteria:",
        "assumptions": "Assumptions",
        "test_plan": "Test plan",
        "verifies": "Verifies:",
        "steps": "Steps:",
        "expected": "Expected:",
        "design": "Technical design",
        "architecture": "Architecture",
        "components": "Components",
        "serves": "Serves:",
        "data_model": "Data model",
        "api": "API",
        "review": "Delivery review",
        "findings": "Findings",
        "risks": "Risks",
    },
    "zh": {
        "analysis": "需求分析",
        "summary": "概述",
        "requirements": "需求",
        "criteria": "验收标准：",
        "assumptions": "假设",
        "test_plan": "测试计划",
        "verifies": "验证：",
        "steps": "步骤：",
        "expected": "预期结果：",
        "design": "技术设计",
        "architecture": "架构",
        "components": "组件",
        "serves": "对应需求：",
        "data_model": "数据模型",
        "api": "API",
        "review": "交付评审",
        "findings": "发现",
        "risks": "风险",
    },
}


def _obj(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_TEXT: dict[str, Any] = {"type": "string"}


def schema_for(deliverable: str, requirements: list[str]) -> dict[str, Any] | None:
    """The JSON Schema of `deliverable`'s form; `requirements`: the REQ-n of the approved analysis,
    the only ones the test plan and the design may name. None for a deliverable without a form."""
    ref: dict[str, Any] = {"type": "string", "enum": requirements} if requirements else _TEXT
    if deliverable == ANALYSIS:
        requirement = _obj(title=_TEXT, description=_TEXT, acceptance_criteria=_list(_TEXT))
        return _obj(summary=_TEXT, requirements=_list(requirement), assumptions=_list(_TEXT))
    if deliverable == TEST_PLAN:
        case = _obj(title=_TEXT, steps=_list(_TEXT), expected=_TEXT)
        if requirements:  # a list of test cases under every requirement: none can be forgotten
            return _obj(cases_by_requirement=_obj(**{req: _list(case) for req in requirements}))
        return _obj(cases=_list(_obj(title=_TEXT, verifies=_list(ref), steps=_list(_TEXT), expected=_TEXT)))
    if deliverable == DESIGN:
        component = _obj(name=_TEXT, serves=_list(ref), description=_TEXT)
        return _obj(architecture=_TEXT, components=_list(component), data_model=_list(_TEXT), api=_list(_TEXT))
    if deliverable == REVIEW:
        return _obj(findings=_list(_TEXT), risks=_list(_TEXT), verdict={"type": "string", "enum": ["GO", "NO-GO"]})
    return None


def response_format(deliverable: str, requirements: list[str]) -> dict[str, Any] | None:
    """The `response_format` of an OpenAI-compatible request for `deliverable`."""
    schema = schema_for(deliverable, requirements)
    if schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"name": deliverable, "schema": schema, "strict": True}}


def render(deliverable: str, answer: str, language: str = "en") -> str | None:
    """The Markdown document of a filled form (`answer`: the model's JSON); None when `answer` is
    not a JSON object (a server that ignored the form: its text is then the document)."""
    try:
        data = json.loads(_unfenced(answer))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    labels = _LABELS.get(language, _LABELS["en"])
    if deliverable == ANALYSIS:
        return _render_analysis(data, labels)
    if deliverable == TEST_PLAN:
        return _render_test_plan(data, labels)
    if deliverable == DESIGN:
        return _render_design(data, labels)
    if deliverable == REVIEW:
        return _render_review(data, labels)
    return None


def _unfenced(text: str) -> str:
    """The JSON inside a ```json fence, which some servers add even in JSON mode."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


def _texts(value: Any) -> list[str]:
    return [_line(v) for v in value if _line(v)] if isinstance(value, list) else []


def _line(value: Any) -> str:
    """One line of text: a value the model filled, its line breaks folded (a heading or label
    inside a field must not be read as the document's own)."""
    return " ".join(str(value).split()) if value is not None and not isinstance(value, (dict, list)) else ""


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _bullets(values: list[str]) -> list[str]:
    return [f"- {v}" for v in values]


def _render_analysis(data: dict[str, Any], t: dict[str, str]) -> str:
    lines = [f"# {t['analysis']}", "", f"## {t['summary']}", "", _line(data.get("summary"))]
    lines += ["", f"## {t['requirements']}"]
    for n, req in enumerate(_dicts(data.get("requirements")), 1):
        lines += ["", f"### REQ-{n}: {_line(req.get('title'))}", "", _line(req.get("description")), ""]
        criteria = _texts(req.get("acceptance_criteria"))
        if criteria:
            lines += [t["criteria"], *_bullets(criteria)]
    lines += ["", f"## {t['assumptions']}", "", *_bullets(_texts(data.get("assumptions")))]
    return "\n".join(lines).strip() + "\n"


def _render_test_plan(data: dict[str, Any], t: dict[str, str]) -> str:
    cases: list[tuple[list[str], dict[str, Any]]] = []
    by_requirement = data.get("cases_by_requirement")
    if isinstance(by_requirement, dict):
        cases = [([_line(req)], case) for req, listed in by_requirement.items() for case in _dicts(listed)]
    else:
        cases = [(_texts(case.get("verifies")), case) for case in _dicts(data.get("cases"))]
    lines = [f"# {t['test_plan']}"]
    for n, (verifies, case) in enumerate(cases, 1):
        lines += ["", f"### TC-{n}: {_line(case.get('title'))}", ""]
        if verifies:
            lines += [f"{t['verifies']} {', '.join(verifies)}", ""]
        steps = _texts(case.get("steps"))
        if steps:
            lines += [t["steps"], *(f"{i}. {step}" for i, step in enumerate(steps, 1)), ""]
        if _line(case.get("expected")):
            lines.append(f"{t['expected']} {_line(case.get('expected'))}")
    return "\n".join(lines).strip() + "\n"


def _render_design(data: dict[str, Any], t: dict[str, str]) -> str:
    lines = [f"# {t['design']}", "", f"## {t['architecture']}", "", _line(data.get("architecture")), ""]
    lines.append(f"## {t['components']}")
    for n, component in enumerate(_dicts(data.get("components")), 1):
        lines += ["", f"### C-{n}: {_line(component.get('name'))}", ""]
        serves = _texts(component.get("serves"))
        if serves:
            lines += [f"{t['serves']} {', '.join(serves)}", ""]
        lines.append(_line(component.get("description")))
    lines += ["", f"## {t['data_model']}", "", *_bullets(_texts(data.get("data_model")))]
    lines += ["", f"## {t['api']}", "", *_bullets(_texts(data.get("api")))]
    return "\n".join(lines).strip() + "\n"


def _render_review(data: dict[str, Any], t: dict[str, str]) -> str:
    lines = [f"# {t['review']}", "", f"## {t['findings']}", "", *_bullets(_texts(data.get("findings")))]
    lines += ["", f"## {t['risks']}", "", *_bullets(_texts(data.get("risks")))]
    verdict = _line(data.get("verdict")).upper()
    if verdict in ("GO", "NO-GO"):
        lines += ["", f"Verdict: {verdict}"]
    return "\n".join(lines).strip() + "\n"
