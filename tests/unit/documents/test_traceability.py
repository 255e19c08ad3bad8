"""The traceability matrix and the verdict, computed from crafted documents."""

from __future__ import annotations

from delivery.documents.traceability import review_with_matrix, trace

ANALYSIS = """### REQ-1: Sign up
Acceptance criteria:
- works
### REQ-2: Post articles
Acceptance criteria:
- works
### REQ-3: Moderate
Acceptance criteria:
- works
"""
TEST_PLAN = """### TC-1: Sign-up
Verifies: REQ-1
Steps:
1. sign up
Expected: an account
### TC-2: Posting
Verifies: REQ-2
Steps:
1. post
Expected: a post
### TC-3: Long posts
Verifies: REQ-2
Steps:
1. post a lot
Expected: a long post
"""
DESIGN = """### AUTH-1: Auth service
Serves: REQ-1
### MOD-1: Moderation
Serves: REQ-3
"""
REVIEW = "# Review\n## Findings\n- ok\n## Risks\n- none\nVerdict: GO\n"


def documents(**changes: str) -> dict[str, str]:
    docs = {
        "requirements_analysis": ANALYSIS,
        "test_plan": TEST_PLAN,
        "technical_design": DESIGN,
        "delivery_review": REVIEW,
    }
    docs.update(changes)
    return docs


def test_trace_builds_the_matrix_from_verifies_and_serves_lines_and_lists_the_gaps():
    traced = trace(documents())
    assert traced["requirements"] == ["REQ-1", "REQ-2", "REQ-3"]
    assert traced["matrix"] == [
        {"requirement": "REQ-1", "test_cases": ["TC-1"], "design_elements": ["AUTH-1"]},
        {"requirement": "REQ-2", "test_cases": ["TC-2", "TC-3"], "design_elements": []},
        {"requirement": "REQ-3", "test_cases": [], "design_elements": ["MOD-1"]},
    ]
    assert traced["gaps"] == [
        {"requirement": "REQ-2", "missing": ["design"]},
        {"requirement": "REQ-3", "missing": ["test_case"]},
    ]
    assert traced["problems"] == {
        "test_plan": ["REQ-3 has no test case (no TC-n verifies it)"],
        "technical_design": ["REQ-2 has no design element (no element serves it)"],
    }
    assert traced["verdict"] == "NO-GO" and "2 gap(s) in test plan, technical design" in traced["reason"]


def test_go_only_when_every_document_is_complete():
    complete = trace(
        documents(
            technical_design=DESIGN + "### C-2: Posts\nServes: REQ-2\n",
            test_plan=TEST_PLAN + "### TC-4: Moderation\nVerifies: REQ-3\nSteps:\n1. x\nExpected: hidden\n",
        )
    )
    assert complete["verdict"] == "GO" and complete["problems"] == {} and complete["gaps"] == []
    broken_review = trace(
        documents(
            technical_design=DESIGN + "### C-2: Posts\nServes: REQ-2\n",
            test_plan=TEST_PLAN + "### TC-4: M\nVerifies: REQ-3\nSteps:\n1. x\nExpected: y\n",
            delivery_review="Looks fine.",
        )
    )
    assert broken_review["verdict"] == "NO-GO" and list(broken_review["problems"]) == ["delivery_review"]
    nothing = trace(documents(requirements_analysis="We will build something nice."))
    assert nothing["verdict"] == "NO-GO" and "no numbered requirements" in nothing["reason"]


def test_the_review_ends_with_the_computed_section_and_its_verdict_line():
    traced = trace(documents())
    review = review_with_matrix(REVIEW, traced, "en")
    assert review.startswith("# Review\n## Findings")
    assert "Verdict: GO\n" not in review.split("---")[0]  # the model's own verdict line is replaced
    assert "| REQ-2 | TC-2, TC-3 | — |" in review
    assert "- test plan: REQ-3 has no test case (no TC-n verifies it)" in review
    assert "(The Coordinator's own verdict was GO; the verdict below is computed.)" in review
    assert review.rstrip().splitlines()[-1] == "Verdict: NO-GO"
    zh = review_with_matrix("评审\nVerdict: NO-GO", traced, "zh")
    assert "可追溯性矩阵" in zh and "协调员自己的结论" not in zh and zh.rstrip().endswith("Verdict: NO-GO")
