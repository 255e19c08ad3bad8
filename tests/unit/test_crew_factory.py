"""The crew and the CrewAI-event mapping, in process with the scripted provider."""

from __future__ import annotations

import threading

import pytest

from crew_factory import (
    CrewEventsHandler,
    build_analysis_crew,
    build_delivery_crew,
    load_events_handler,
    run_analysis,
    run_delivery,
)
from delivery.events import EventType
from delivery.llm.providers import make_llm_factory
from delivery.settings import Settings
from delivery.tasks.records import TaskRecord

FACTORY = make_llm_factory(Settings(_env_file=None, llm_provider="scripted"))


def record(requirement: str = "Build a wiki with search", task_id: str = "t") -> TaskRecord:
    return TaskRecord(task_id=task_id, requirement=requirement, skip_confirmation=True, language="en")


def run_crew(rec: TaskRecord, handler: CrewEventsHandler, factory=FACTORY) -> dict[str, str]:
    run_analysis(rec, handler, factory)
    run_delivery(rec, handler, factory)
    return rec.deliverables


def test_analysis_then_delivery_crews_each_task_seeing_what_came_before():
    rec = record()
    analysis = build_analysis_crew(rec, FACTORY)
    assert [a.role for a in analysis.agents] == ["Product Manager"]
    rec.deliverables["requirements_analysis"] = "- REQ-1: search pages"
    delivery = build_delivery_crew(rec, FACTORY)
    assert [a.role for a in delivery.agents] == ["QA Engineer", "Software Developer", "Delivery Coordinator"]
    assert [len(t.context) for t in delivery.tasks if isinstance(t.context, list)] == [0, 1, 2]
    tasks = analysis.tasks + delivery.tasks
    assert all("Build a wiki with search" in t.description for t in tasks)
    assert all("Write everything in English" in t.description for t in tasks)
    assert all("REQ-1: search pages" in t.description for t in delivery.tasks)
    zh = TaskRecord(task_id="z", requirement="开发维基", skip_confirmation=True, language="zh")
    assert all("简体中文" in t.description for t in build_analysis_crew(zh, FACTORY).tasks)


def test_a_revision_shows_the_previous_analysis_and_the_feedback():
    rec = record()
    rec.deliverables["requirements_analysis"] = "old analysis text"
    rec.feedback = ["add export to PDF"]
    (task,) = build_analysis_crew(rec, FACTORY).tasks
    assert "old analysis text" in task.description and "- add export to PDF" in task.description


def test_events_map_to_our_types_and_update_the_record():
    rec = record()
    published: list[tuple[str, str, str]] = []
    deliverables = run_crew(rec, CrewEventsHandler(rec, lambda a, t, c, m: published.append((a, t, c))), FACTORY)
    kinds = [t for _, t, _ in published]
    assert kinds.count("agent_start") == 4 and kinds.count("output") == 4 and kinds.count("step_end") == 4
    assert kinds.count("action") == 4  # one model call per agent
    assert kinds.count("thought") > 100
    assert rec.completed_steps == 4
    assert set(deliverables) == {"requirements_analysis", "test_plan", "technical_design", "delivery_review"}
    outputs = [c for _, t, c in published if t == "output"]
    assert outputs == [
        deliverables[k] for k in ("requirements_analysis", "test_plan", "technical_design", "delivery_review")
    ]


def test_a_subclass_can_customise_what_is_published():
    class Quiet(CrewEventsHandler):
        def on_thought(self, agent_name, delta):  # drop tokens
            pass

        def on_agent_output(self, agent_name, output):
            self.publish(agent_name, EventType.output, output.upper())

    rec = record()
    published: list[tuple[str, str, str]] = []
    run_crew(rec, Quiet(rec, lambda a, t, c, m: published.append((a, t, c))), FACTORY)
    assert not [p for p in published if p[1] == "thought"]
    assert all(c == c.upper() for _, t, c in published if t == "output")


def test_crews_on_parallel_threads_route_events_to_their_own_handler():
    names = ["alpha", "beta", "gamma", "delta"]
    seen: dict[str, list[str]] = {n: [] for n in names}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            rec = record(f"Build the {name} system with {name} reports", task_id=name)
            run_crew(rec, CrewEventsHandler(rec, lambda a, t, c, m: seen[name].append(c)), FACTORY)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in names:
        text = "".join(seen[name])
        assert name in text
        assert not [o for o in names if o != name and o in text]


class UpperThoughts(CrewEventsHandler):
    def on_thought(self, agent_name, delta):
        self.publish(agent_name, EventType.thought, delta.upper())


def test_events_handler_setting_names_a_subclass_or_says_what_is_wrong():
    assert load_events_handler("") is CrewEventsHandler
    assert load_events_handler(f"{__name__}:UpperThoughts") is UpperThoughts
    with pytest.raises(ValueError, match="'module:Class'"):
        load_events_handler("UpperThoughts")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_events_handler("no_such_module_here:Handler")
    with pytest.raises(ValueError, match=r"not a subclass of crew_factory\.CrewEventsHandler"):
        load_events_handler("collections:OrderedDict")


def test_crews_follow_the_roster_in_agents_config():
    from agents_config import AGENTS

    rec = record()
    crews = [build_analysis_crew(rec, FACTORY), build_delivery_crew(rec, FACTORY)]
    assert [a.role for c in crews for a in c.agents] == [spec.role for spec in AGENTS]
    assert [t.expected_output for c in crews for t in c.tasks] == [spec.expected_output for spec in AGENTS]
