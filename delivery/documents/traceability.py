"""The traceability matrix: which requirement has a test case and a design element, computed
from the documents themselves (never taken from the model), and the verdict that follows."""

from __future__ import annotations

import re
from typing import Any

# The deliverables (agents_config.AGENTS[i].deliverable) the matrix is computed from, and the one
# it is appended to.
ANALYSIS, TEST_PLAN, DESIGN, REVIEW = "requirements_analysis", "test_plan", "technical_design", "delivery_review"

_REQ = re.compile(r"\bREQ-(\d+)\b")
_TC = re.compile(r"\bTC-(\d+)\b")
_ELEMENT = re.compile(r"\b(?!REQ-|TC-)([A-Z][A-Z0-9]{0,9}-\d+)\b")


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
    return {"requirements": requirements, "matrix": matrix, "gaps": gaps, "verdict": verdict, "reason": reason}


def review_with_matrix(review: str, traced: dict[str, Any], language: str) -> str:
    """Append the computed matrix, the gaps and the final verdict to the Coordinator's review."""
    zh = language == "zh"
    lines = [
        "",
        "",
        "---",
        "",
        "## 可追溯性矩阵(由代码根据文档计算)" if zh else "## Traceability matrix (computed from the documents)",
        "",
        "| 需求 | 测试用例 | 设计 |" if zh else "| Requirement | Test cases | Design |",
        "|---|---|---|",
    ]
    for row in traced["matrix"]:
        lines.append(
            f"| {row['requirement']} | {', '.join(row['test_cases']) or '—'} | "
            f"{', '.join(row['design_elements']) or '—'} |"
        )
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
