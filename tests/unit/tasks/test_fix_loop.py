"""The check after each agent and the fix loop, in process with the scripted double, whose first
drafts have known gaps when SCRIPTED_GAPS is on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from delivery.events import Event
from delivery.tasks.records import TaskStatus
from tests.support.lifecycle import Lifecycle

AGENTS = ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]


@pytest.fixture
def lifecycles() -> Iterator[list[Lifecycle]]:
    made: list[Lifecycle] = []
    yield made
    for lc in made:
        lc.close()


def build(made: list[Lifecycle], folder: Path, **settings: Any) -> Lifecycle:
    lc = Lifecycle(folder, **settings)
    made.append(lc)
    return lc


def checks(lc: Lifecycle, task_id: str) -> list[Event]:
    return [e for e in lc.log(task_id) if e.event_type == "check"]


def meta(event: Event) -> dict[str, Any]:
    assert event.metadata is not None
    return event.metadata


def test_each_agent_rewrites_its_document_once_and_the_package_is_go(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path, scripted_gaps=True)
    task_id = lc.commands.submit("Build a shop with a cart, payments and order history", True).task_id
    lc.run_next()
    found = checks(lc, task_id)
    assert [(e.agent_name, meta(e)["fix_round"], meta(e)["passed"]) for e in found] == [
        (agent, n, n == 1) for agent in AGENTS for n in (0, 1)
    ]
    first_drafts = {e.agent_name: meta(e)["gaps"] for e in found if meta(e)["fix_round"] == 0}
    assert first_drafts == {
        "ProductManager": ['REQ-2 has no acceptance criteria (an "Acceptance criteria:" line, then "- " items)'],
        "QAEngineer": [
            "TC-1 names REQ-99, which the requirements analysis does not define",
            "REQ-4 has no test case (no TC-n verifies it)",
        ],
        "SoftwareDeveloper": [
            'C-2 has no "Serves:" line naming the REQ-n it serves',
            "REQ-2 has no design element (no element serves it)",
        ],
        "Coordinator": [
            'the review has no "## Risks" section',
            'the review does not end with the line "Verdict: GO" or "Verdict: NO-GO"',
        ],
    }
    rewrite = found[0]
    assert "ProductManager rewrites it (fix round 1 of 2)" in rewrite.content and "- REQ-2 has no" in rewrite.content
    # The order viewers see: a draft's check, the rewrite's tokens, its check, then the output.
    pm = [e.event_type for e in lc.log(task_id) if e.agent_name == "ProductManager"]
    assert pm.index("check") < pm.index("output") and pm.count("output") == 1 and pm.count("agent_start") == 1
    record = lc.store.get(task_id)
    assert record.status is TaskStatus.succeeded and record.traceability
    assert record.traceability["verdict"] == "GO" and record.traceability["problems"] == {}
    assert meta(lc.log(task_id)[-1])["verdict"] == "GO"
    # Every version is kept with its reason and what the check found.
    for deliverable in ("requirements_analysis", "test_plan", "technical_design"):
        versions = lc.store.versions(task_id, deliverable)
        assert [(v.number, v.reason, bool(v.gaps)) for v in versions] == [
            (1, "first draft", True),
            (2, "fix round 1", False),
        ]
        assert lc.store.version(task_id, deliverable, 2).content == record.deliverables[deliverable]  # type: ignore[union-attr]
    review_versions = lc.store.versions(task_id, "delivery_review")
    assert [v.reason for v in review_versions] == [
        "first draft",
        "fix round 1",
        "the computed traceability matrix and verdict added",
    ]


def test_without_fix_rounds_the_gaps_stay_and_the_verdict_is_no_go(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path, scripted_gaps=True, max_fix_rounds=0)
    task_id = lc.commands.submit("Build a shop with a cart, payments and order history", True).task_id
    lc.run_next()
    found = checks(lc, task_id)
    assert [(e.agent_name, meta(e)["accepted"], meta(e)["passed"]) for e in found] == [
        (agent, True, False) for agent in AGENTS
    ]
    assert "still has 1 gap(s) after 0 fix round(s)" in found[0].content
    record = lc.store.get(task_id)
    assert record.status is TaskStatus.succeeded  # delivered, with its gaps on record
    traced = record.traceability
    assert traced and traced["verdict"] == "NO-GO"
    assert set(traced["problems"]) == {"requirements_analysis", "test_plan", "technical_design", "delivery_review"}
    review = record.deliverables["delivery_review"]
    assert "- test plan: REQ-4 has no test case (no TC-n verifies it)" in review
    assert review.rstrip().splitlines()[-1] == "Verdict: NO-GO"


def test_a_revision_round_is_a_version_with_its_reason_and_the_prompt_knows_the_previous_one(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path)
    task_id = lc.commands.submit("Build a notes app with tags", skip_confirmation=False).task_id
    lc.run_next()
    first = lc.log(task_id)[-1]
    assert first.event_type == "awaiting_confirmation"
    assert meta(first)["version"] == 1 and meta(first)["previous_version"] is None
    lc.commands.confirm(task_id, approved=False, feedback="add offline sync")
    lc.run_next()
    second = lc.log(task_id)[-1]
    assert meta(second)["version"] == 2 and meta(second)["previous_version"] == 1
    versions = lc.store.versions(task_id, "requirements_analysis")
    assert [v.reason for v in versions] == ["first draft", "revision round 1: add offline sync"]
    assert "offline sync" in lc.store.version(task_id, "requirements_analysis", 2).content  # type: ignore[union-attr]
