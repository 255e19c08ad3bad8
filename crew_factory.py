"""Builds the crews and turns the CrewAI events of one run into our stream events.

Customise what is published by subclassing `CrewEventsHandler` and overriding its `on_*` hooks,
then name your class in the setting EVENTS_HANDLER (e.g. `EVENTS_HANDLER=my_handlers:Quiet`).

Routing: CrewAI's event bus is process-wide, but a run registers its own handler as a *stream
sink* (delivery.crew.compat.stream_sink), which CrewAI calls synchronously, in emission order,
on the thread that emits the event. So every event reaches the stream of the task that caused it,
even with several crews running at once, and token chunks keep their order.

Mapping (CrewAI event -> our event_type):
    task_started        -> agent_start  (the task's agent begins; metadata.task = task description)
    llm_call_started    -> action       (the agent calls its model)
    tool_usage_started  -> action       (the agent uses a tool)
    llm_stream_chunk    -> thought      (content = the token delta)
    llm_call_retrying   -> model_retry  (ours: an attempt failed; the next one's text starts over)
    task_completed      -> output       (content = the agent's full deliverable), then step_end
A run is two crews: the first agent alone (repeated on each revision round), then the rest once
the analysis is approved (or straight away with skip_confirmation). The lifecycle
(delivery/tasks/) adds `start`, `awaiting_confirmation`, `confirmed` and exactly one terminal
event (`end`, `error` or `cancelled`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from agents_config import APPROVED_ANALYSIS, EARLIER_DELIVERABLE, LANGUAGE_INSTRUCTIONS, REVISION_REQUEST, AgentSpec
from delivery.crew.checks import CheckResult, DocumentChecks
from delivery.crew.compat import CPU_TURNS, Agent, Crew, CrewEvent, CrewOutput, Process, Task, stream_sink
from delivery.crew.roster import ROSTER
from delivery.events import SYSTEM_AGENT, EventType, carriable
from delivery.llm.providers import LLMFactory
from delivery.llm.usage import agent_usage
from delivery.tasks.records import TaskRecord

# (agent_name, event_type, content, metadata): how a handler hands an event to the task's stream
Publish = Callable[[str, str, str, "dict[str, Any] | None"], None]


class CrewEventsHandler:
    """Publishes one run's CrewAI events. Subclass and override ``on_*`` to change what is sent."""

    def __init__(self, record: TaskRecord, publish: Publish) -> None:
        self.record = record
        self._publish = publish
        self.current_agent = SYSTEM_AGENT
        self._dispatch: dict[str, Callable[[Any], None]] = {
            CrewEvent.task_started.value: self._task_started,
            CrewEvent.llm_call_started.value: self._llm_call_started,
            CrewEvent.tool_usage_started.value: self._tool_usage_started,
            CrewEvent.llm_stream_chunk.value: self._llm_stream_chunk,
            CrewEvent.llm_call_retrying.value: self._llm_call_retrying,
            CrewEvent.task_completed.value: self._task_completed,
        }

    def __call__(self, source: Any, event: Any) -> None:
        handler = self._dispatch.get(getattr(event, "type", ""))
        if handler is not None:
            handler(event)

    def publish(
        self, agent_name: str, event_type: EventType, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        self._publish(agent_name, event_type.value, content, metadata)

    # -- CrewAI events -> hooks -------------------------------------------------------------

    def _agent_of(self, task: Any) -> str:
        role = getattr(getattr(task, "agent", None), "role", None)
        spec = ROSTER.by_role(role) if role else None
        return spec.name if spec else (role or self.current_agent)

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

    def _llm_call_retrying(self, event: Any) -> None:
        self.on_model_retry(
            self.current_agent,
            f"The model call failed ({event.error}); attempt {event.attempt} of {event.max_attempts} "
            f"in {event.delay_s:g} s, its answer from the start",
            {
                "model": event.model,
                "attempt": event.attempt,
                "max_attempts": event.max_attempts,
                "delay_s": event.delay_s,
                "error": event.error,
            },
        )

    def _task_completed(self, event: Any) -> None:
        agent = self._agent_of(event.task)
        output = carriable(event.output.raw) if event.output is not None else ""
        spec = ROSTER.by_name(agent)
        if spec is not None:
            self.record.deliverables[spec.deliverable] = output
        self.on_agent_output(agent, output)
        # A revised analysis repeats step 1; it does not add a step.
        self.record.completed_steps = max(self.record.completed_steps, ROSTER.step_of(agent))
        self.on_step_end(agent, self.record.completed_steps, self.record.total_steps)

    # -- overridable hooks ------------------------------------------------------------------

    def on_agent_start(self, agent_name: str, task_description: str) -> None:
        self.publish(agent_name, EventType.agent_start, f"{agent_name} started", {"task": task_description})

    def on_action(self, agent_name: str, description: str, metadata: dict[str, Any]) -> None:
        self.publish(agent_name, EventType.action, description, metadata)

    def on_thought(self, agent_name: str, delta: str) -> None:
        self.publish(agent_name, EventType.thought, delta)

    def on_model_retry(self, agent_name: str, description: str, metadata: dict[str, Any]) -> None:
        """An attempt of the agent's model call failed; the next one streams its answer anew."""
        self.publish(agent_name, EventType.model_retry, description, metadata)

    def on_agent_output(self, agent_name: str, output: str) -> None:
        self.publish(agent_name, EventType.output, output)

    def on_check(self, agent_name: str, result: CheckResult) -> None:
        """The code checked a document the agent wrote (each draft and each fix round)."""
        self.publish(
            agent_name,
            EventType.check,
            result.summary(),
            {
                "deliverable": result.deliverable,
                "version": result.version,
                "fix_round": result.fix_round,
                "max_fix_rounds": result.max_fix_rounds,
                "gaps": result.gaps,
                "passed": result.passed,
                "accepted": result.accepted,
            },
        )

    def on_step_end(self, agent_name: str, completed: int, total: int) -> None:
        self.publish(
            agent_name,
            EventType.step_end,
            f"{agent_name} finished step {completed}/{total}",
            {"completed_steps": completed, "total_steps": total, "usage": agent_usage(self.record, agent_name)},
        )


def load_events_handler(path: str) -> type[CrewEventsHandler]:
    """The handler class EVENTS_HANDLER names ("module:Class"); CrewEventsHandler when empty."""
    if not path:
        return CrewEventsHandler
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"EVENTS_HANDLER={path!r}: write it as 'module:Class', e.g. 'my_handlers:QuietHandler'.")
    try:
        handler = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"EVENTS_HANDLER={path!r} cannot be loaded ({exc}); the module must be importable "
            "from the directory the service runs in."
        ) from exc
    if not (isinstance(handler, type) and issubclass(handler, CrewEventsHandler)):
        raise ValueError(f"EVENTS_HANDLER={path!r} is not a subclass of crew_factory.CrewEventsHandler.")
    return handler


def _agent(spec: AgentSpec, record: TaskRecord, llm_factory: LLMFactory) -> Agent:
    return Agent(
        role=spec.role,
        goal=spec.goal,
        backstory=spec.backstory,
        llm=llm_factory(spec.name, record),
        allow_delegation=False,
        verbose=False,
        max_iter=3,
        max_retry_limit=0,  # transient model failures are retried with backoff in delivery/llm/remote.py
    )


def _guarded(spec: AgentSpec, checks: DocumentChecks | None) -> dict[str, Any]:
    """A task's guardrail: the code's check of its document, and the fix rounds it may take."""
    if checks is None:
        return {}
    return {"guardrail": checks.guardrail(spec), "guardrail_max_retries": checks.max_fix_rounds}


def build_analysis_crew(record: TaskRecord, llm_factory: LLMFactory, checks: DocumentChecks | None = None) -> Crew:
    """The first agent alone; on a revision round it sees its last analysis and the feedback."""
    spec = ROSTER.analyst
    description = spec.description.format(requirement=record.requirement)
    if record.feedback:
        description += REVISION_REQUEST.format(
            previous=record.deliverables.get(spec.deliverable, ""),
            feedback="\n".join(f"- {f}" for f in record.feedback),
        )
    agent = _agent(spec, record, llm_factory)
    task = Task(
        description=description + LANGUAGE_INSTRUCTIONS[record.language],
        expected_output=spec.expected_output,
        agent=agent,
        **_guarded(spec, checks),
    )
    return Crew(agents=[agent], tasks=[task], process=Process.sequential, verbose=False)


def unfinished_delivery(record: TaskRecord) -> list[AgentSpec]:
    """The delivery agents still to run: all of them, or after a lost process the ones after the
    last that finished (its deliverable stored at its step_end)."""
    return [spec for spec in ROSTER.delivery if ROSTER.step_of(spec.name) > record.completed_steps]


def build_delivery_crew(record: TaskRecord, llm_factory: LLMFactory, checks: DocumentChecks | None = None) -> Crew:
    """The other agents, in order, each seeing the approved analysis and every earlier
    deliverable of this crew (when the crew goes on after a lost process, the finished ones'
    documents as text)."""
    analysis = APPROVED_ANALYSIS.format(analysis=record.deliverables.get(ROSTER.analyst.deliverable, ""))
    remaining = unfinished_delivery(record)
    for spec in ROSTER.delivery:
        if spec not in remaining and spec.deliverable in record.deliverables:
            analysis += EARLIER_DELIVERABLE.format(title=spec.filename, text=record.deliverables[spec.deliverable])
    agents: list[Agent] = []
    tasks: list[Task] = []
    for spec in remaining:
        agent = _agent(spec, record, llm_factory)
        tasks.append(
            Task(
                description=spec.description.format(requirement=record.requirement)
                + analysis
                + LANGUAGE_INSTRUCTIONS[record.language],
                expected_output=spec.expected_output,
                agent=agent,
                context=list(tasks),
                **_guarded(spec, checks),
            )
        )
        agents.append(agent)
    return Crew(agents=agents, tasks=tasks, process=Process.sequential, verbose=False)


def _kickoff(crew: Crew, handler: CrewEventsHandler) -> list[str]:
    with stream_sink(handler), CPU_TURNS.taken():
        output = crew.kickoff()
    assert isinstance(output, CrewOutput), "our crews do not use CrewAI's own streaming mode"
    return [carriable(task_output.raw) for task_output in output.tasks_output]


def run_analysis(
    record: TaskRecord, handler: CrewEventsHandler, llm_factory: LLMFactory, checks: DocumentChecks | None = None
) -> str:
    """Run the first agent on the calling thread; return (and record) the analysis."""
    (analysis,) = _kickoff(build_analysis_crew(record, llm_factory, checks), handler)
    record.deliverables[ROSTER.analyst.deliverable] = analysis
    return analysis


def run_delivery(
    record: TaskRecord, handler: CrewEventsHandler, llm_factory: LLMFactory, checks: DocumentChecks | None = None
) -> dict[str, str]:
    """Run the delivery crew on the calling thread; return its deliverables."""
    remaining = unfinished_delivery(record)
    if not remaining:  # every document was written before the process running it was lost
        return {}
    outputs = _kickoff(build_delivery_crew(record, llm_factory, checks), handler)
    produced = {spec.deliverable: text for spec, text in zip(remaining, outputs, strict=True)}
    record.deliverables.update(produced)
    return produced
