"""Every CrewAI internal this service relies on, in one place, checked against one version.

CrewAI has no public API for what we need (routing one crew's events to one task, emitting model
events from our own LLM classes, muting a costly console listener), so we use its internals. They
may change in any release: `PINNED_VERSION` is the one checked, and
tests/unit/crew/test_crewai_compat.py fails with a message naming the broken assumption when an
upgrade breaks one. Every other module imports CrewAI through here.

CrewAI reads its telemetry switches from the environment when it is first imported, so this
module sets them before importing it (off unless CREWAI_TELEMETRY=true: the service may run with
no network and should not phone home). CrewAI's own switches, not OTEL_SDK_DISABLED, which would
also switch off this service's traces (OTEL_EXPORTER_OTLP_ENDPOINT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from delivery.settings import get_settings

PINNED_VERSION = "1.15.30"  # the same pin as in requirements.txt (a contract test checks both)


def _prepare_environment() -> None:
    if get_settings().crewai_telemetry:
        return
    for name, value in {
        "CREWAI_DISABLE_TELEMETRY": "true",
        "CREWAI_DISABLE_TRACKING": "true",
        "CREWAI_TRACING_ENABLED": "false",
    }.items():
        os.environ.setdefault(name, value)


_prepare_environment()

# ruff: noqa: E402  (the imports below must follow the environment set-up)
import portalocker
from crewai import Agent, Crew, Process, Task
from crewai.crews.crew_output import CrewOutput
from crewai.events.event_bus import crewai_event_bus
from crewai.events.event_listener import event_listener
from crewai.events.stream_context import add_stream_sink, publish_stream_event, reset_stream_sinks
from crewai.events.types.llm_events import LLMCallType, LLMStreamChunkEvent
from crewai.llms.base_llm import BaseLLM, llm_call_context
from crewai.llms.providers.openai.completion import OpenAICompletion
from crewai.state.event_record import EventNode, EventRecord
from crewai_core import lock_store

__all__ = [
    "FINAL_ANSWER_PREFIX",
    "PINNED_VERSION",
    "Agent",
    "BaseLLM",
    "Crew",
    "CrewEvent",
    "CrewOutput",
    "ModelCallRetrying",
    "OpenAICompletion",
    "OpenAICompletionWithForm",
    "Process",
    "Task",
    "as_guardrail",
    "detach_console_token_listener",
    "emit_call_completed",
    "emit_call_started",
    "emit_chunk",
    "forget_token_events",
    "installed_version",
    "model_call",
    "publish_to_stream",
    "stream_sink",
    "version_warning",
]

# The answer format CrewAI's agent executor parses when a model does not call tools: our own
# LLM classes wrap their text in it.
FINAL_ANSWER_PREFIX = "Thought: I now can give a great answer\nFinal Answer: "


class CrewEvent(str, Enum):
    """The `type` of the CrewAI events that crew_factory.CrewEventsHandler maps."""

    task_started = "task_started"  # .task (.agent.role, .description)
    llm_call_started = "llm_call_started"  # .model
    tool_usage_started = "tool_usage_started"  # .tool_name
    llm_stream_chunk = "llm_stream_chunk"  # .chunk
    llm_call_completed = "llm_call_completed"  # .usage (prompt_tokens, completion_tokens), .response
    llm_call_failed = "llm_call_failed"
    task_completed = "task_completed"  # .task, .output.raw
    # Ours, not CrewAI's (ModelCallRetrying): one attempt of a model call failed, the next follows.
    llm_call_retrying = "llm_call_retrying"


@dataclasses.dataclass(frozen=True)
class ModelCallRetrying:
    """Published to the stream sinks (`publish_to_stream`) by our remote client between two
    attempts of one model call: the failed attempt's text is void and the next streams from its
    start, so viewers must be told before its first token."""

    model: str
    attempt: int  # the attempt about to start: 2 .. max_attempts
    max_attempts: int
    delay_s: float  # the backoff before it
    error: str  # why the last attempt failed: the exception's type and message
    type: str = CrewEvent.llm_call_retrying.value


@contextlib.contextmanager
def _local_lock(name: str, *, timeout: float = 120) -> Iterator[None]:
    path = os.path.join(
        tempfile.gettempdir(), f"crewai-{hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()}.lock"
    )
    with portalocker.Lock(path, timeout=timeout):
        yield


# CrewAI locks its own storage files (the last kickoff's task outputs, in a local SQLite file)
# through Redis whenever REDIS_URL is set, which is our setting for event streams and the broker:
# a Redis connection and a pub/sub round trip per agent's output, and a crew that fails when
# Redis restarts. The files are local, so their locks are local files, as CrewAI's own default.
lock_store.set_lock_backend(_local_lock)


def installed_version() -> str:
    return importlib.metadata.version("crewai")


def version_warning() -> str | None:
    """A message for the log when the installed CrewAI is not the one these internals were checked on."""
    installed = installed_version()
    if installed == PINNED_VERSION:
        return None
    return (
        f"CrewAI {installed} is installed, but this service was checked against {PINNED_VERSION}: "
        "run `make install` to get the pinned version, or run tests/unit/crew/test_crewai_compat.py "
        "to see whether the internals it relies on still hold."
    )


def detach_console_token_listener() -> int:
    """Remove CrewAI's console handler for token events from the process-wide bus; return how
    many were removed.

    It redraws a terminal panel we never show (our crews run with verbose=False), yet on every
    token it copies the whole text of the current model call: O(n²) per call, shared by all
    concurrent crews, and about half of CrewAI's per-token cost (see docs/benchmarks.md). It is
    found through the bus's private handler table.
    """
    owner = type(event_listener).__name__ + "."
    removed = 0
    for handler in list(crewai_event_bus._sync_handlers.get(LLMStreamChunkEvent, ())):
        if getattr(handler, "__qualname__", "").startswith(owner):
            crewai_event_bus.off(LLMStreamChunkEvent, handler)
            removed += 1
    return removed


_record_every_event = EventRecord.add


def _record_all_but_tokens(record: EventRecord, event: Any) -> EventNode:
    if event.type == CrewEvent.llm_stream_chunk.value:
        return EventNode(event=event)  # a node nobody keeps: the token is not recorded
    return _record_every_event(record, event)


def forget_token_events() -> None:
    """Keep CrewAI's per-run event record (its execution graph) free of token events.

    CrewAI records every event a run emits, each token included, with its graph node and edges,
    until the run ends: ~8 objects per token that the cyclic garbage collector walks on every
    full collection. With 20 crews writing, that was most of the heap, and full collections
    stopped every thread, the SSE loop included, for 0.2-0.7 s (docs/benchmarks.md). Nothing
    reads token nodes back: the record's readers look for task and crew events, and tolerate
    missing links (EventRecord.add checks each id)."""
    EventRecord.add = _record_all_but_tokens  # type: ignore[method-assign, assignment]


@contextlib.contextmanager
def stream_sink(sink: Callable[[Any, Any], None]) -> Iterator[None]:
    """Route every CrewAI event emitted in this context to `sink(source, event)`.

    Stream sinks live in a contextvar and are called synchronously, in emission order, on the
    emitting thread (threads CrewAI starts copy the context), so concurrent crews never see each
    other's events and tokens keep their order.
    """
    token = add_stream_sink(sink)
    try:
        yield
    finally:
        reset_stream_sinks(token)


class CpuTurns:
    """Lets one crew at a time run the stretches between its model calls (kickoff, an agent's
    set-up, parsing and checking an answer); a crew waiting for its model runs freely.

    Those stretches are pure Python (~60-85 ms per kickoff). When 20 crews start or hand over
    together they all want the GIL at once, and the SSE loop and the archiver (viewers see an
    event once it is stored) queue for it behind them. Taking turns costs no throughput, since
    the GIL runs those stretches one at a time anyway, and it lowered the worst 1-s window of
    viewers' latency (docs/benchmarks.md, "Stalls"). A crew holds at most one turn; an error
    anywhere in the crew gives it back."""

    def __init__(self) -> None:
        self._turn = threading.Semaphore(1)

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Hold a turn in this context, except while a model call of it runs."""
        held = True
        self._turn.acquire()

        def sink(_source: Any, event: Any) -> None:  # called for every event, tokens too: kept cheap
            nonlocal held
            kind = getattr(event, "type", "")
            if kind in _MODEL_WAIT and held:
                held = False
                self._turn.release()
            elif kind in _CALL_ENDED and not held:
                self._turn.acquire()
                held = True

        try:
            with stream_sink(sink):
                yield
        finally:
            if held:
                self._turn.release()


# Plain strings: no Enum lookup per token. A retry's backoff is a wait for the model too.
_MODEL_WAIT = frozenset({CrewEvent.llm_call_started.value, CrewEvent.llm_call_retrying.value})
_CALL_ENDED = frozenset({CrewEvent.llm_call_completed.value, CrewEvent.llm_call_failed.value})
CPU_TURNS = CpuTurns()


def publish_to_stream(source: Any, event: Any) -> None:
    """Hand `event` to this context's stream sinks, in order, on this thread, as CrewAI does
    with its own events (for ours: ModelCallRetrying)."""
    publish_stream_event(source, event)


Guardrail = Callable[[Any], tuple[bool, Any]]


def as_guardrail(check: Guardrail) -> Guardrail:
    """A task guardrail CrewAI accepts: it validates the callable's return annotation at runtime
    and refuses the string that `from __future__ import annotations` makes of it, so the real type
    is set here."""
    check.__annotations__["return"] = tuple[bool, Any]
    return check


class OpenAICompletionWithForm(OpenAICompletion):
    """CrewAI's OpenAI client, sending `document_form` as the request's `response_format`.

    CrewAI types its own `response_format` field as `{"type": "json_object"}` or a pydantic class
    (whose schema it cannot make strict for dynamic keys), so a JSON-schema format is added where
    CrewAI builds the request's parameters (a private method)."""

    document_form: dict[str, Any] | None = None

    def _prepare_completion_params(self, messages: Any, tools: Any = None) -> dict[str, Any]:
        params: dict[str, Any] = super()._prepare_completion_params(messages, tools)
        if self.document_form is not None:
            params["response_format"] = self.document_form
        return params


def model_call() -> contextlib.AbstractContextManager[Any]:
    """The scope CrewAI expects around one model call (it ties the call's events together)."""
    return llm_call_context()


def emit_call_started(llm: BaseLLM, messages: Any, from_task: Any, from_agent: Any) -> None:
    llm._emit_call_started_event(messages=messages, from_task=from_task, from_agent=from_agent)


def emit_chunk(llm: BaseLLM, chunk: str, from_task: Any, from_agent: Any) -> None:
    llm._emit_stream_chunk_event(
        chunk=chunk, from_task=from_task, from_agent=from_agent, call_type=LLMCallType.LLM_CALL
    )


def emit_call_completed(
    llm: BaseLLM, response: str, messages: Any, from_task: Any, from_agent: Any, usage: dict[str, int] | None = None
) -> None:
    """`usage`: {"prompt_tokens", "completion_tokens", "total_tokens"}, as CrewAI's own clients report it."""
    llm._emit_call_completed_event(
        response=response,
        call_type=LLMCallType.LLM_CALL,
        from_task=from_task,
        from_agent=from_agent,
        messages=messages,
        usage=usage,
    )


detach_console_token_listener()
forget_token_events()
