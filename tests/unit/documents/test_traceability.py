"""The traceability matrix, computed from crafted documents."""

from __future__ import annotations

from delivery.documents.traceability import review_with_matrix, trace

REQUIREMENTS = """# Analysis
- REQ-1: users sign up
- REQ-2: users post articles
- REQ-3: admins moderate
- REQ-2 is the core (mentioned twice)
"""
TEST_PLAN = """| Case | Req |
| TC-1 | REQ-1 | sign-up works |
| TC-2 | REQ-2 | posting works |
| TC-3 | REQ-2 | long posts |
"""
DESIGN = """## Components
- AUTH-1 (REQ-1): auth service
- Moderation is out of scope for now (REQ-3 deferred)
"""


def test_trace_finds_the_gaps_in_crafted_documents():
    traced = trace(REQUIREMENTS, TEST_PLAN, DESIGN)
    assert traced["requirements"] == ["REQ-1", "REQ-2", "REQ-3"]
    assert traced["matrix"] == [
        {"requirement": "REQ-1", "test_cases": ["TC-1"], "design_elements": ["AUTH-1"]},
        {"requirement": "REQ-2", "test_cases": ["TC-2", "TC-3"], "design_elements": []},
        {
            "requirement": "REQ-3",
            "test_cases": [],
            "design_elements": ["- Moderation is out of scope for now (REQ-3 deferred)"],
        },
    ]
    assert traced["gaps"] == [
        {"requirement": "REQ-2", "missing": ["design"]},
        {"requirement": "REQ-3", "missing": ["test_case"]},
    ]
    assert traced["verdict"] == "NO-GO" and "2 of 3" in traced["reason"]


def test_trace_is_exact_about_ids_and_says_go_only_when_complete():
    assert trace("REQ-1", "TC-1 covers REQ-10", "C-1 for REQ-10")["gaps"] == [
        {"requirement": "REQ-1", "missing": ["test_case", "design"]}
    ]
    complete = trace("REQ-1 REQ-2", "TC-1 REQ-1\nTC-2 REQ-2", "C-1 REQ-1\nC-2 REQ-2")
    assert complete["verdict"] == "GO" and complete["gaps"] == []
    nothing = trace("We will build something nice.", "", "")
    assert nothing["verdict"] == "NO-GO" and "no numbered requirements" in nothing["reason"]


def test_review_ends_with_the_computed_matrix_and_verdict():
    traced = trace(REQUIREMENTS, TEST_PLAN, DESIGN)
    review = review_with_matrix("The model says: Verdict: GO", traced, "en")
    assert review.startswith("The model says: Verdict: GO")
    assert "| REQ-2 | TC-2, TC-3 | — |" in review
    assert "- REQ-3: missing test_case" in review
    assert review.rstrip().splitlines()[-1].startswith("**Verdict: NO-GO**")
    zh = review_with_matrix("评审", traced, "zh")
    assert "可追溯性矩阵" in zh and "缺少" in zh
