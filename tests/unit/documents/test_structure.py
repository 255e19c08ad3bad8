"""The defined shape of each deliverable, and the check that lists every gap a document has."""

from __future__ import annotations

from delivery.documents.structure import check, requirement_ids, verdict_line

ANALYSIS = """# Requirements analysis

## Summary

A small to-do app.

## Requirements

### REQ-1: Add tasks
Users add tasks with a title.
Acceptance criteria:
- A task with a title is saved.
- An empty title is refused.

### REQ-2: Complete tasks
Acceptance criteria:
- A task can be marked done.

## Assumptions
- Web only.
"""

TEST_PLAN = """# Test plan

### TC-1: Adding a task
Verifies: REQ-1
Steps:
1. Open the app.
2. Add "milk".
Expected: "milk" is listed.

### TC-2: Completing a task
Verifies: REQ-2
Steps:
1. Mark "milk" done.
Expected: it is shown as done.
"""

DESIGN = """# Technical design
## Architecture
One service.
## Components
### C-1: Task store
Serves: REQ-1, REQ-2
Keeps the tasks.
### API-1: REST API
Serves: REQ-1
"""

REVIEW = """# Delivery review
## Findings
- Everything is covered.
## Risks
- Scope.

Verdict: GO
"""


def test_complete_documents_have_no_gap():
    requirements = requirement_ids(ANALYSIS)
    assert requirements == ["REQ-1", "REQ-2"]
    for name, text in (
        ("requirements_analysis", ANALYSIS),
        ("test_plan", TEST_PLAN),
        ("technical_design", DESIGN),
        ("delivery_review", REVIEW),
    ):
        assert check(name, text, requirements) == [], name
    assert verdict_line(REVIEW) == "GO" and verdict_line("no verdict") is None


def test_the_analysis_needs_numbered_requirements_in_order_each_with_criteria():
    assert check("requirements_analysis", "We will build something nice.", []) == [
        'no requirement is numbered as "### REQ-1: <title>"'
    ]
    broken = ANALYSIS.replace(
        "### REQ-2: Complete tasks\nAcceptance criteria:\n- A task can be marked done.\n",
        "### REQ-3:\nNo criteria here.\n",
    )
    assert check("requirements_analysis", broken, []) == [
        "requirements must be numbered REQ-1 to REQ-2 in order (found REQ-1, REQ-3)",
        "REQ-3 has no title",
        'REQ-3 has no acceptance criteria (an "Acceptance criteria:" line, then "- " items)',
    ]


def test_the_test_plan_needs_steps_an_expected_result_and_existing_requirements_for_every_requirement():
    plan = TEST_PLAN.replace("Verifies: REQ-2", "Verifies: REQ-2, REQ-9").replace(
        "Expected: it is shown as done.\n", ""
    )
    assert check("test_plan", plan, ["REQ-1", "REQ-2", "REQ-3"]) == [
        "TC-2 names REQ-9, which the requirements analysis does not define",
        'TC-2 has no expected result (an "Expected: <result>" line)',
        "REQ-3 has no test case (no TC-n verifies it)",
    ]
    no_steps = "### TC-1: Adding\nVerifies: REQ-1\nExpected: saved\n"
    assert check("test_plan", no_steps, ["REQ-1"]) == ['TC-1 has no steps (a "Steps:" line, then numbered steps)']
    assert check("test_plan", "### TC-1: x\nSteps:\n1. a\nExpected: b\n", ["REQ-1"]) == [
        'TC-1 has no "Verifies:" line naming the REQ-n it verifies',
        "REQ-1 has no test case (no TC-n verifies it)",
    ]


def test_the_design_needs_every_requirement_served_by_an_element():
    assert check("technical_design", DESIGN, ["REQ-1", "REQ-2", "REQ-3"]) == [
        "REQ-3 has no design element (no element serves it)"
    ]
    assert check("technical_design", "### C-1: Store\nKeeps things.\n", ["REQ-1"]) == [
        'C-1 has no "Serves:" line naming the REQ-n it serves',
        "REQ-1 has no design element (no element serves it)",
    ]
    assert check("technical_design", "# Design\nprose only\n", ["REQ-1"]) == [
        'no design element is numbered as "### C-1: <name>"'
    ]


def test_the_review_needs_findings_risks_and_a_last_verdict_line():
    assert check("delivery_review", "# Review\nAll good.\nVerdict: GO\nThanks!", []) == [
        'the review has no "## Findings" section',
        'the review has no "## Risks" section',
        'the review does not end with the line "Verdict: GO" or "Verdict: NO-GO"',
    ]
    assert check("delivery_review", REVIEW.replace("Verdict: GO", "**Verdict: NO-GO**"), []) == []


def test_chinese_labels_are_read_too():
    analysis = "### REQ-1: 添加任务\n用户可以添加任务。\n验收标准:\n- 任务被保存。\n"
    plan = "### TC-1: 添加\n验证: REQ-1\n步骤:\n1. 打开应用\n预期结果: 任务出现在列表中\n"
    design = "### C-1: 任务存储\n对应需求: REQ-1\n"
    review = "# 交付评审\n## 发现\n- 完整\n## 风险\n- 范围\nVerdict: GO\n"
    assert [
        check(n, t, ["REQ-1"])
        for n, t in (
            ("requirements_analysis", analysis),
            ("test_plan", plan),
            ("technical_design", design),
            ("delivery_review", review),
        )
    ] == [[], [], [], []]


def test_an_empty_document_is_one_gap():
    assert check("test_plan", "   \n", ["REQ-1"]) == ["the document is empty"]
