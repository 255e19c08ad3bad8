"""Builds the four-agent crew and turns the CrewAI events of one run into our stream events.

Routing: CrewAI's event bus is process-wide, but its *stream sinks* are held in a contextvar and
called synchronously, in emission order, on the thread that emits the event. The worker thread
of a run registers its own ``CrewEventsHandler`` as a sink before ``kickoff``, so every event
reaches the stream of the task that caused it, even with several crews running at once, and
token chunks keep their order.

Mapping (CrewAI event -> our event_type):
    task_started        -> agent_start  (the task's agent begins; content = task description)
    llm_call_started    -> action       (the agent calls its model)
    tool_usage_started  -> action       (the agent uses a tool)
    llm_stream_chunk    -> thought      (content = the token delta)
    task_completed      -> output       (content = the agent's full deliverable), then step_end
A run is two crews: the ProductManager alone (repeated on each revision round), then QA,
Developer and Coordinator once the analysis is approved (or straight away with
skip_confirmation). The runner (task_runner.py) adds `start`, `awaiting_confirmation`,
`confirmed` and exactly one terminal event (`end`, `error` or `cancelled`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import crewai_env  # noqa: F401  (must precede crewai)
from crewai import Agent, Crew, Process, Task
from crewai.events.event_bus import crewai_event_bus
from crewai.events.event_listener import event_listener
from crewai.events.stream_context import add_stream_sink, reset_stream_sinks
from crewai.events.types.llm_events import LLMStreamChunkEvent

from agents_config import AGENTS, APPROVED_ANALYSIS, LANGUAGE_INSTRUCTIONS, REVISION_REQUEST, TASK_TEMPLATES
from models import EventType
from task_store import TaskRecord

Publish = Callable[[str, str, str, "dict[str, Any] | None"], Any]
LLMFactory = Callable[[str, TaskRecord], Any]  # (agent name, record) -> CrewAI LLM

SYSTEM_AGENT = "System"


def detach_console_token_listener() -> None:
    """Remove CrewAI's console handler for token events from the process-wide bus.

    It redraws a terminal panel we never show (our crews run with verbose=False), yet on every
    token it copies the whole text of the current model call: O(n²) per call, shared by all
    concurrent crews, and about half of CrewAI's per-token cost (see docs/benchmarks.md).
    """
    for handler in list(crewai_event_bus._sync_handlers.get(LLMStreamChunkEvent, ())):
        if getattr(handler, "__qualname__", "").startswith(type(event_listener).__name__ + "."):
            crewai_event_bus.off(LLMStreamChunkEvent, handler)


detach_console_token_listener()


class CrewEventsHandler:
    """Publishes one run's CrewAI events. Subclass and override ``on_*`` to change what is sent."""

    def __init__(self, record: TaskRecord, publish: Publish) -> None:
        self.record = record
        self._publish = publish
        self._names_by_role = {a["role"]: a["name"] for a in AGENTS}
        self._deliverable_by_name = {a["name"]: a["deliverable"] for a in AGENTS}
        self._step_by_name = {a["name"]: n for n, a in enumerate(AGENTS, 1)}
        self.current_agent = SYSTEM_AGENT
        self._dispatch: dict[str, Callable[[Any], None]] = {
            "task_started": self._task_started,
            "llm_call_started": self._llm_call_started,
            "tool_usage_started": self._tool_usage_started,
            "llm_stream_chunk": self._llm_stream_chunk,
            "task_completed": self._task_completed,
        }

    def __call__(self, source: Any, event: Any) -> None:
        handler = self._dispatch.get(getattr(event, "type", ""))
        if handler is not None:
            handler(event)

    def publish(self, agent_name: str, event_type: EventType, content: str,
                metadata: dict[str, Any] | None = None) -> None:
        self._publish(agent_name, event_type.value, content, metadata)

    # -- CrewAI events -> hooks -------------------------------------------------------------

    def _agent_of(self, task: Any) -> str:
        role = getattr(getattr(task, "agent", None), "role", None)
        return self._names_by_role.get(role, role or self.current_agent)

    def _task_started(self, event: Any) -> None:
        self.current_agent = self._agent_of(event.task)
        self.record.current_agent = self.current_agent
        self.on_agent_start(self.current_agent, getattr(event.task, "description", "") or "")

    def _llm_call_started(self, event: Any) -> None:
        self.on_action(self.current_agent, f"Calling model {event.model}", {"model": event.model})

    def _tool_usage_started(self, event: Any) -> None:
        tool = getattr(event, "tool_name", "tool")
        self.on_action(self.current_agent, f"Using tool {tool}", {"tool": tool})

    def _llm_stream_chunk(self, event: Any) -> None:
        if event.chunk:
            self.on_thought(self.current_agent, event.chunk)

    def _task_completed(self, event: Any) -> None:
        agent = self._agent_of(event.task)
        output = event.output.raw if event.output is not None else ""
        key = self._deliverable_by_name.get(agent)
        if key:
            self.record.deliverables[key] = output
        self.on_agent_output(agent, output)
        # A revised analysis repeats step 1; it does not add a step.
        self.record.completed_steps = max(self.record.completed_steps, self._step_by_name.get(agent, 0))
        self.on_step_end(agent, self.record.completed_steps, self.record.total_steps)

    # -- overridable hooks ------------------------------------------------------------------

    def on_agent_start(self, agent_name: str, task_description: str) -> None:
        self.publish(agent_name, EventType.agent_start, f"{agent_name} started", {
            "task": task_description})

    def on_action(self, agent_name: str, description: str, metadata: dict[str, Any]) -> None:
        self.publish(agent_name, EventType.action, description, metadata)

    def on_thought(self, agent_name: str, delta: str) -> None:
        self.publish(agent_name, EventType.thought, delta)

    def on_agent_output(self, agent_name: str, output: str) -> None:
        self.publish(agent_name, EventType.output, output)

    def on_step_end(self, agent_name: str, completed: int, total: int) -> None:
        self.publish(agent_name, EventType.step_end, f"{agent_name} finished step {completed}/{total}",
                     {"completed_steps": completed, "total_steps": total})


def _agent(spec: dict[str, str], record: TaskRecord, llm_factory: LLMFactory) -> Agent:
    return Agent(
        role=spec["role"],
        goal=spec["goal"],
        backstory=spec["backstory"],
        llm=llm_factory(spec["name"], record),
        allow_delegation=False,
        verbose=False,
        max_iter=3,
        max_retry_limit=0,  # transient model failures are retried with backoff in llm_providers
    )


def _description(name: str, record: TaskRecord) -> str:
    return TASK_TEMPLATES[name]["description"].format(requirement=record.requirement)


def build_analysis_crew(record: TaskRecord, llm_factory: LLMFactory) -> Crew:
    """The ProductManager alone; on a revision round it sees its last analysis and the feedback."""
    spec = AGENTS[0]
    description = _description(spec["name"], record)
    if record.feedback:
        description += REVISION_REQUEST.format(
            previous=record.deliverables.get(spec["deliverable"], ""),
            feedback="\n".join(f"- {f}" for f in record.feedback))
    agent = _agent(spec, record, llm_factory)
    task = Task(description=description + LANGUAGE_INSTRUCTIONS[record.language],
                expected_output=TASK_TEMPLATES[spec["name"]]["expected_output"], agent=agent)
    return Crew(agents=[agent], tasks=[task], process=Process.sequential, verbose=False)


def build_delivery_crew(record: TaskRecord, llm_factory: LLMFactory) -> Crew:
    """QA, Developer and Coordinator, in order, each seeing the approved analysis and every
    earlier deliverable of this crew."""
    analysis = APPROVED_ANALYSIS.format(analysis=record.deliverables.get(AGENTS[0]["deliverable"], ""))
    agents: list[Agent] = []
    tasks: list[Task] = []
    for spec in AGENTS[1:]:
        agent = _agent(spec, record, llm_factory)
        tasks.append(Task(
            description=_description(spec["name"], record) + analysis + LANGUAGE_INSTRUCTIONS[record.language],
            expected_output=TASK_TEMPLATES[spec["name"]]["expected_output"],
            agent=agent,
            context=list(tasks),
        ))
        agents.append(agent)
    return Crew(agents=agents, tasks=tasks, process=Process.sequential, verbose=False)


def _kickoff(crew: Crew, handler: CrewEventsHandler) -> list[str]:
    token = add_stream_sink(handler)
    try:
        output = crew.kickoff()
    finally:
        reset_stream_sinks(token)
    return [task_output.raw for task_output in output.tasks_output]


def run_analysis(record: TaskRecord, handler: CrewEventsHandler, llm_factory: LLMFactory) -> str:
    """Run the ProductManager on the calling thread; return (and record) the analysis."""
    (analysis,) = _kickoff(build_analysis_crew(record, llm_factory), handler)
    record.deliverables[AGENTS[0]["deliverable"]] = analysis
    return analysis


def run_delivery(record: TaskRecord, handler: CrewEventsHandler, llm_factory: LLMFactory) -> dict[str, str]:
    """Run QA, Developer and Coordinator on the calling thread; return their deliverables."""
    outputs = _kickoff(build_delivery_crew(record, llm_factory), handler)
    produced = {spec["deliverable"]: text for spec, text in zip(AGENTS[1:], outputs)}
    record.deliverables.update(produced)
    return produced
