"""The CrewAI contract: every internal delivery/crew/compat.py relies on, checked one by one.

When a CrewAI upgrade breaks one, the failure names the assumption and where it is used, so the
fix starts in compat.py instead of in a stream that silently went quiet.
"""

from __future__ import annotations

import inspect
import re
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from delivery.crew import compat

ROOT = Path(__file__).resolve().parents[3]


def assume(condition: object, assumption: str) -> None:
    assert condition, (
        f"CrewAI {compat.installed_version()} broke an assumption of delivery/crew/compat.py: {assumption}"
    )


def parameters(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)


def test_the_installed_crewai_is_the_pinned_one():
    pinned = re.search(r"^crewai==(\S+)$", (ROOT / "requirements-core.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == compat.PINNED_VERSION, (
        "requirements-core.txt (in requirements.txt) and compat.PINNED_VERSION must name the same CrewAI version"
    )
    assert compat.installed_version() == compat.PINNED_VERSION, compat.version_warning()
    assert compat.version_warning() is None


def test_crewais_telemetry_is_off_by_its_own_switches():
    import os

    from crewai.telemetry.telemetry import Telemetry

    for name in ("CREWAI_DISABLE_TELEMETRY", "CREWAI_DISABLE_TRACKING"):
        assert os.environ.get(name) == "true"
    assert os.environ.get("OTEL_SDK_DISABLED") != "true", "that would switch off our own traces too"
    assume(
        not Telemetry().ready and Telemetry._is_telemetry_disabled(),
        "CREWAI_DISABLE_TELEMETRY alone keeps CrewAI's telemetry from starting",
    )


def test_event_types_are_the_names_the_handler_maps():
    from crewai.events.types.llm_events import (
        LLMCallCompletedEvent,
        LLMCallFailedEvent,
        LLMCallStartedEvent,
        LLMStreamChunkEvent,
    )
    from crewai.events.types.task_events import TaskCompletedEvent, TaskStartedEvent
    from crewai.events.types.tool_usage_events import ToolUsageStartedEvent

    classes: dict[compat.CrewEvent, type[BaseModel]] = {
        compat.CrewEvent.task_started: TaskStartedEvent,
        compat.CrewEvent.task_completed: TaskCompletedEvent,
        compat.CrewEvent.llm_call_started: LLMCallStartedEvent,
        compat.CrewEvent.llm_call_completed: LLMCallCompletedEvent,
        compat.CrewEvent.llm_call_failed: LLMCallFailedEvent,
        compat.CrewEvent.llm_stream_chunk: LLMStreamChunkEvent,
        compat.CrewEvent.tool_usage_started: ToolUsageStartedEvent,
    }
    for name, event_class in classes.items():
        assume(
            event_class.model_fields["type"].default == name.value,
            f"{event_class.__name__}.type is {name.value!r} (CrewEvent in compat.py)",
        )
    fields: dict[type[BaseModel], set[str]] = {
        TaskStartedEvent: {"task"},
        TaskCompletedEvent: {"task", "output"},
        LLMCallStartedEvent: {"model"},
        LLMStreamChunkEvent: {"chunk"},
        ToolUsageStartedEvent: {"tool_name"},
    }
    for event_class, names in fields.items():
        assume(
            names <= set(event_class.model_fields),
            f"{event_class.__name__} has the fields {sorted(names)} that crew_factory.CrewEventsHandler reads",
        )


def test_the_console_token_listener_is_found_in_the_bus_handler_table_and_detached():
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.llm_events import LLMStreamChunkEvent

    table = getattr(crewai_event_bus, "_sync_handlers", None)
    assume(isinstance(table, dict), "the event bus keeps its sync handlers in the dict `_sync_handlers`")
    assert isinstance(table, dict)
    owner = type(compat.event_listener).__name__ + "."
    left = [h for h in table.get(LLMStreamChunkEvent, ()) if getattr(h, "__qualname__", "").startswith(owner)]
    assume(
        not left,
        "the console listener's token handler is a method of the EventListener singleton, "
        "removable with crewai_event_bus.off",
    )
    assert compat.detach_console_token_listener() == 0  # idempotent


def test_stream_sinks_receive_every_event_in_order_on_the_emitting_thread():
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.llm_events import LLMStreamChunkEvent

    received: list[tuple[str, str]] = []

    def sink(source: Any, event: Any) -> None:
        received.append((threading.current_thread().name, event.chunk))

    with compat.stream_sink(sink):
        for n in range(50):
            crewai_event_bus.emit(None, LLMStreamChunkEvent(chunk=f"t{n}", call_id="c"))
    crewai_event_bus.emit(None, LLMStreamChunkEvent(chunk="after", call_id="c"))  # outside the scope
    me = threading.current_thread().name
    assume(
        received == [(me, f"t{n}") for n in range(50)],
        "stream sinks are called synchronously, in emission order, on the emitting thread, and only "
        "inside their context",
    )


def test_our_own_events_reach_the_stream_sinks_in_order_with_crewais():
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.llm_events import LLMStreamChunkEvent

    received: list[str] = []
    ours = compat.ModelCallRetrying(model="m", attempt=2, max_attempts=4, delay_s=1.0, error="ReadError: cut")
    with compat.stream_sink(lambda _source, event: received.append(event.type)):
        crewai_event_bus.emit(None, LLMStreamChunkEvent(chunk="a", call_id="c"))
        compat.publish_to_stream(None, ours)
        crewai_event_bus.emit(None, LLMStreamChunkEvent(chunk="b", call_id="c"))
    compat.publish_to_stream(None, ours)  # outside the scope: nobody gets it
    assume(
        received == ["llm_stream_chunk", "llm_call_retrying", "llm_stream_chunk"],
        "crewai.events.stream_context.publish_stream_event hands an event to the sinks of the current "
        "context, as the bus does with CrewAI's own events",
    )


def test_the_llm_emission_helpers_take_the_arguments_compat_passes():
    from crewai.llms.base_llm import BaseLLM

    for name, needed in {
        "_emit_call_started_event": {"messages", "from_task", "from_agent"},
        "_emit_stream_chunk_event": {"chunk", "from_task", "from_agent", "call_type"},
        "_emit_call_completed_event": {"response", "call_type", "from_task", "from_agent", "messages"},
    }.items():
        helper = getattr(BaseLLM, name, None)
        assume(helper is not None and needed <= parameters(helper), f"BaseLLM.{name} accepts {sorted(needed)}")


def test_an_offline_llm_emits_started_chunks_and_completed_events():
    from delivery.llm.scripted import ScriptedLLM

    seen: list[str] = []
    llm = ScriptedLLM(model="scripted-test-double", agent_name="QAEngineer", requirement="Build a wiki")
    with compat.stream_sink(lambda source, event: seen.append(event.type)):
        answer = llm.call("hello")
    assume(
        seen[0] == "llm_call_started"
        and seen[-1] == "llm_call_completed"
        and set(seen[1:-1]) == {"llm_stream_chunk"}
        and len(seen) > 10,
        "BaseLLM's _emit_* helpers emit llm_call_started, llm_stream_chunk..., llm_call_completed",
    )
    assert answer.startswith(compat.FINAL_ANSWER_PREFIX)


def test_our_final_answer_format_is_what_the_agent_parser_accepts():
    from crewai.agents.parser import AgentFinish, parse

    parsed = parse(compat.FINAL_ANSWER_PREFIX + "# The document\n\nREQ-1")
    assume(
        isinstance(parsed, AgentFinish) and parsed.output == "# The document\n\nREQ-1",
        "a text starting with FINAL_ANSWER_PREFIX parses as an AgentFinish whose output is the rest",
    )


def test_the_openai_client_accepts_the_arguments_we_build_it_with():
    llm = compat.OpenAICompletion(
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key="k",
        stream=True,
        timeout=5.0,
        max_retries=0,
        temperature=0.4,
    )
    assume(
        llm.stream is True and llm.model == "m",
        "OpenAICompletion takes model, base_url, api_key, stream, timeout, max_retries and temperature",
    )


def test_a_document_form_reaches_the_requests_parameters_as_its_response_format():
    form = {"type": "json_schema", "json_schema": {"name": "test_plan", "schema": {"type": "object"}, "strict": True}}
    llm = compat.OpenAICompletionWithForm(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", stream=True)
    messages: Any = [{"role": "user", "content": "Write it"}]
    plain = compat.OpenAICompletion._prepare_completion_params(llm, messages)
    assume(
        plain["messages"] == messages and plain["stream"] is True and "response_format" not in plain,
        "OpenAICompletion._prepare_completion_params(messages, tools) builds the chat request's parameters",
    )
    llm.document_form = form
    assert llm._prepare_completion_params(messages)["response_format"] == form


def test_a_guardrail_with_our_annotations_is_accepted_and_its_rejection_makes_the_agent_rewrite():
    from delivery.llm.scripted import ScriptedLLM

    attempts: list[str] = []

    def guard(output: Any) -> tuple[bool, Any]:
        attempts.append(output.raw)
        return (True, output.raw) if len(attempts) > 1 else (False, "add a section")

    llm = ScriptedLLM(model="scripted-test-double", agent_name="QAEngineer", requirement="Build a wiki")
    agent = compat.Agent(role="QA Engineer", goal="g", backstory="b", llm=llm, max_iter=2, max_retry_limit=0)
    task = compat.Task(
        description="Write a test plan",
        expected_output="a plan",
        agent=agent,
        guardrail=compat.as_guardrail(guard),
        guardrail_max_retries=2,
    )
    compat.Crew(agents=[agent], tasks=[task], verbose=False).kickoff()
    assume(len(attempts) == 2, "a guardrail returning (False, feedback) makes CrewAI run the same agent again")


def test_crewais_storage_locks_are_local_even_with_redis_url_set(monkeypatch):
    """CrewAI would lock its local files through REDIS_URL (ours, for events and the broker): a
    crew then fails whenever Redis restarts. compat.py gives it local file locks."""
    from crewai_core import lock_store

    monkeypatch.setattr(lock_store, "_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    lock_store._redis_connection.cache_clear()
    with lock_store.lock("kickoff_task_outputs"):
        held = True
    assert held


def test_the_runs_event_record_keeps_every_event_but_tokens():
    """forget_token_events: CrewAI's per-run record (read through the bus's runtime state) holds
    the run's other events while tokens still reach the stream sinks."""
    from delivery.llm.scripted import ScriptedLLM

    seen: list[str] = []
    recorded: list[str] = []

    def sink(source: Any, event: Any) -> None:
        seen.append(event.type)
        if event.type == compat.CrewEvent.task_completed.value:
            state = compat.crewai_event_bus.runtime_state
            assume(state is not None, "a kickoff's runtime state (its event record) is on the bus during the run")
            assert state is not None
            recorded.extend(node.event.type for node in state.event_record.nodes.values())

    llm = ScriptedLLM(model="scripted-test-double", agent_name="QAEngineer", requirement="Build a wiki")
    agent = compat.Agent(role="QA Engineer", goal="g", backstory="b", llm=llm, max_iter=2, max_retry_limit=0)
    task = compat.Task(description="Write a test plan", expected_output="a plan", agent=agent)
    with compat.stream_sink(sink):
        compat.Crew(agents=[agent], tasks=[task], verbose=False).kickoff()
    assert seen.count(compat.CrewEvent.llm_stream_chunk.value) > 50
    assume(compat.CrewEvent.task_started.value in recorded, "EventRecord.add records each event of a run")
    assert compat.CrewEvent.llm_stream_chunk.value not in recorded
