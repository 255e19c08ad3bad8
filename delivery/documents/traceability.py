"""The traceability matrix and the verdict, computed from the documents themselves (never taken
from the model): which test cases verify each requirement and which design elements serve it,
every gap the structure check finds, and GO only when there is none."""

from __future__ import annotations

import re
from typing import Any

from delivery.documents.structure import ANALYSIS, DESIGN, REVIEW, TEST_PLAN, check, items, requirement_ids

DOCUMENT_NAMES = {
    ANALYSIS: "requirements analysis",
    TEST_PLAN: "test plan",
    DESIGN: "technical design",
    REVIEW: "delivery review",
}
_VERDICT_LINE = re.compile(r"^\**\s*verdict\s*[:：]\s*(GO|NO-GO)\b.*$", re.I | re.M)


def trace(documents: dict[str, str]) -> dict[str, Any]:
    """Matrix, coverage gaps, every structural problem per document, and the verdict."""
    requirements = requirement_ids(documents.get(ANALYSIS, ""))
    cases = items(documents.get(TEST_PLAN, ""), "TC")
    elements = [e for e in items(documents.get(DESIGN, "")) if e.id.split("-")[0] not in ("REQ", "TC")]
    matrix, gaps = [], []
    for req in requirements:
        tests = [case.id for case in cases if req in case.refs("verifies")]
        design = [element.id for element in elements if req in element.refs("serves")]
        matrix.append({"requirement": req, "test_cases": tests, "design_elements": design})
        missing = [kind for kind, found in (("test_case", tests), ("design", design)) if not found]
        if missing:
            gaps.append({"requirement": req, "missing": missing})
    problems = {
        name: found
        for name in (ANALYSIS, TEST_PLAN, DESIGN, REVIEW)
        if name in documents and (found := check(name, documents[name], requirements))
    }
    count = sum(len(found) for found in problems.values())
    if not requirements:
        verdict, reason = "NO-GO", "the requirements analysis defines no numbered requirements (### REQ-n)"
    elif count:
        verdict, reason = (
            "NO-GO",
            f"the check found {count} gap(s) in " + ", ".join(DOCUMENT_NAMES[name] for name in problems),
        )
    else:
        verdict, reason = (
            "GO",
            (
                f"all {len(requirements)} requirements have a test case and a design element, "
                "and every document has its defined shape"
            ),
        )
    return {
        "requirements": requirements,
        "matrix": matrix,
        "gaps": gaps,
        "problems": problems,
        "verdict": verdict,
        "reason": reason,
    }


def review_with_matrix(review: str, traced: dict[str, Any], language: str) -> str:
    """The Coordinator's review with its own verdict line replaced by the computed section: the
    matrix, the gaps, and the computed verdict as the document's last line."""
    zh = language == "zh"
    own = _VERDICT_LINE.findall(review)
    body = _VERDICT_LINE.sub("", review).rstrip()
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
    lines += ["", "### 检查发现的缺口" if zh else "### Gaps found by the check", ""]
    if traced["problems"]:
        for name, found in traced["problems"].items():
            lines += [f"- {DOCUMENT_NAMES[name]}: {problem}" for problem in found]
    else:
        lines.append("- 无" if zh else "- None")
    if own and own[-1].upper() != traced["verdict"]:
        lines += [
            "",
            f"(协调员自己的结论是 {own[-1].upper()};以下结论由代码计算。)"
            if zh
            else f"(The Coordinator's own verdict was {own[-1].upper()}; the verdict below is computed.)",
        ]
    lines += ["", f"Verdict: {traced['verdict']}", ""]
    return body + "\n".join(lines)
