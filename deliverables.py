"""The delivery package: file names, the traceability matrix (computed from the documents, never
taken from the model) and the zip archive."""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

from agents_config import AGENTS

FILENAMES = {
    "requirements_analysis": "REQUIREMENTS.md",
    "test_plan": "TEST_PLAN.md",
    "technical_design": "TECH_DESIGN.md",
    "delivery_review": "DELIVERY_REVIEW.md",
}
AGENT_OF = {a["deliverable"]: a["name"] for a in AGENTS}

_REQ = re.compile(r"\bREQ-(\d+)\b")
_TC = re.compile(r"\bTC-(\d+)\b")
_ELEMENT = re.compile(r"\b(?!REQ-|TC-)([A-Z][A-Z0-9]{0,9}-\d+)\b")


def resolve_name(name: str) -> str | None:
    """Accept a deliverable key (`test_plan`) or its file name (`TEST_PLAN.md`)."""
    if name in FILENAMES:
        return name
    for key, filename in FILENAMES.items():
        if name.lower() == filename.lower():
            return key
    return None


def _ordered_ids(pattern: re.Pattern[str], text: str, prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for number in pattern.findall(text):
        seen.setdefault(f"{prefix}-{int(number)}", None)
    return list(seen)


def _references(text: str, requirement: str) -> list[str]:
    """Lines of `text` that mention `requirement`."""
    pattern = re.compile(rf"\b{re.escape(requirement)}\b")
    return [line for line in text.splitlines() if pattern.search(line)]


def trace(requirements_doc: str, test_plan: str, design: str) -> dict[str, Any]:
    """Matrix of requirement -> test cases and design elements, the gaps, and a verdict."""
    requirements = _ordered_ids(_REQ, requirements_doc, "REQ")
    matrix, gaps = [], []
    for req in requirements:
        test_lines = _references(test_plan, req)
        tests = list(dict.fromkeys(f"TC-{int(n)}" for line in test_lines for n in _TC.findall(line)))
        if test_lines and not tests:
            tests = [line.strip()[:60] for line in test_lines]
        design_lines = _references(design, req)
        elements = list(dict.fromkeys(m for line in design_lines for m in _ELEMENT.findall(line)))
        if design_lines and not elements:
            elements = [line.strip()[:60] for line in design_lines]
        matrix.append({"requirement": req, "test_cases": tests, "design_elements": elements})
        missing = [kind for kind, found in (("test_case", tests), ("design", elements)) if not found]
        if missing:
            gaps.append({"requirement": req, "missing": missing})
    if not requirements:
        verdict, reason = "NO-GO", "the requirements analysis defines no numbered requirements (REQ-n)"
    elif gaps:
        verdict, reason = "NO-GO", f"{len(gaps)} of {len(requirements)} requirements are not fully covered"
    else:
        verdict, reason = "GO", f"all {len(requirements)} requirements have a test case and a design element"
    return {"requirements": requirements, "matrix": matrix, "gaps": gaps, "verdict": verdict,
            "reason": reason}


def review_with_matrix(review: str, traced: dict[str, Any], language: str) -> str:
    """Append the computed matrix, the gaps and the final verdict to the Coordinator's review."""
    zh = language == "zh"
    lines = ["", "", "---", "",
             "## 可追溯性矩阵(由代码根据文档计算)" if zh else "## Traceability matrix (computed from the documents)",
             "",
             "| 需求 | 测试用例 | 设计 |" if zh else "| Requirement | Test cases | Design |",
             "|---|---|---|"]
    for row in traced["matrix"]:
        lines.append(f"| {row['requirement']} | {', '.join(row['test_cases']) or '—'} | "
                     f"{', '.join(row['design_elements']) or '—'} |")
    lines += ["", "### 缺口" if zh else "### Gaps", ""]
    if traced["gaps"]:
        for gap in traced["gaps"]:
            lines.append(f"- {gap['requirement']}: {'缺少 ' if zh else 'missing '}{', '.join(gap['missing'])}")
    elif not traced["requirements"]:
        lines.append("- 需求分析中没有编号需求(REQ-n)" if zh else "- The analysis has no numbered requirements (REQ-n)")
    else:
        lines.append("- 无" if zh else "- None")
    lines += ["", f"**Verdict: {traced['verdict']}** — {traced['reason']}", ""]
    return review.rstrip() + "\n".join(lines)


def build_zip(deliverables: dict[str, str], events: list[dict[str, Any]], task: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, filename in FILENAMES.items():
            archive.writestr(filename, deliverables.get(key, ""))
        archive.writestr("events.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
        archive.writestr("task.json", json.dumps(task, ensure_ascii=False, indent=2))
    return buffer.getvalue()
