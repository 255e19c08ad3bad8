"""The crew as data: language detection, and the roster every part of the service reads."""

from __future__ import annotations

import pytest

from agents_config import AGENTS, detect_language
from delivery.crew.roster import ROSTER, Roster


def test_language_detection():
    assert detect_language("开发一个简单的待办事项应用") == "zh"
    assert detect_language("开发一个 todo app,支持 REST API 和 OAuth 登录") == "zh"
    assert detect_language("Build a todo app") == "en"
    assert detect_language("Build a todo app for 李") == "en"


def test_the_roster_is_agents_config_in_pipeline_order():
    assert (
        ROSTER.names == [a.name for a in AGENTS] == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    )
    assert ROSTER.total_steps == 4 and ROSTER.analyst is AGENTS[0] and list(ROSTER.delivery) == AGENTS[1:]
    assert ROSTER.filenames == {
        "requirements_analysis": "REQUIREMENTS.md",
        "test_plan": "TEST_PLAN.md",
        "technical_design": "TECH_DESIGN.md",
        "delivery_review": "DELIVERY_REVIEW.md",
    }
    assert [ROSTER.step_of(name) for name in ROSTER.names] == [1, 2, 3, 4] and ROSTER.step_of("User") == 0
    assert ROSTER.author_of("test_plan").name == "QAEngineer"
    assert ROSTER.by_role("Software Developer") is AGENTS[2]
    assert ROSTER.resolve_deliverable("test_plan") == ROSTER.resolve_deliverable("test_plan.MD") == "test_plan"
    assert ROSTER.resolve_deliverable("secrets") is None
    public = ROSTER.public()
    assert [a["name"] for a in public["agents"]] == ROSTER.names and public["total_steps"] == 4
    assert all(set(a["title"]) == set(a["tab"]) == {"en", "zh"} for a in public["agents"])


def test_a_roster_that_cannot_work_is_refused_with_what_to_fix():
    with pytest.raises(ValueError, match="at least two agents"):
        Roster(AGENTS[:1])
    with pytest.raises(ValueError, match="its own deliverable"):
        Roster([AGENTS[0], AGENTS[1].model_copy(update={"deliverable": AGENTS[0].deliverable})])
