"""OpenTelemetry traces: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; then one trace per task.
Spans carry names, ids, timings and token counts, never the requirement or the documents.

    task submitted                       (root, the API process that accepted it)
    └─ phase analysis | phase delivery    (whichever process runs it: API thread or Celery worker)
       └─ Crew.kickoff                    (OpenInference's CrewAI instrumentation)
          └─ <the agent's task>           (OpenInference: one per agent)
             └─ llm <model>               (ours, from the usage meter: every provider, token counts)

The root span's context is kept in the task record (`trace_context`, a W3C traceparent), so a
phase run by another process, minutes later, continues the same trace. Off by default: the
API's tracer is then a no-op and nothing is instrumented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from delivery.security.redaction import redacted_text
from delivery.settings import Settings
from delivery.tasks.records import Phase, TaskRecord

_tracer = trace.get_tracer("multi-agent-delivery")
_propagator = TraceContextTextMapPropagator()
_enabled = False


def configure(settings: Settings, service_name: str, exporter: Any = None) -> bool:
    """Turn tracing on for this process when an OTLP endpoint is set (or an `exporter` is given,
    for tests); return whether it is on. Call once per process."""
    global _enabled
    if _enabled or not (settings.otel_exporter_otlp_endpoint or exporter is not None):
        return _enabled
    from openinference.instrumentation import TraceConfig  # noqa: PLC0415 - only when tracing
    from openinference.instrumentation.crewai import CrewAIInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    trace.set_tracer_provider(provider)
    # Names, ids, timings and token counts, not the texts: prompts carry the requirement and outputs
    # the documents, which stay in this service's own store (as the audit log keeps only a hash).
    CrewAIInstrumentor().instrument(tracer_provider=provider, config=TraceConfig(hide_inputs=True, hide_outputs=True))
    _enabled = True
    return True


def shutdown() -> None:
    """Send what is buffered (at process exit)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if _enabled and flush is not None:
        flush()


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id in a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def start_task(record: TaskRecord) -> None:
    """Open the task's trace at submission; keep its context in the record for every process."""
    if not _enabled:
        return
    attributes: dict[str, str | bool] = {
        "task.id": record.task_id,
        "task.language": record.language,
        "task.skip_confirmation": record.skip_confirmation,
    }
    with _tracer.start_as_current_span("task submitted", context=otel_context.Context(), attributes=attributes):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        record.trace_context = carrier.get("traceparent")


@contextlib.contextmanager
def phase_span(record: TaskRecord, phase: Phase, process: str) -> Iterator[Span | None]:
    """The span of one phase, current while it runs (the crews' spans nest under it)."""
    if not _enabled:
        yield None
        return
    parent = _propagator.extract({"traceparent": record.trace_context}) if record.trace_context else None
    attributes = {"task.id": record.task_id, "task.phase": phase.value, "process.instance": process}
    with _tracer.start_as_current_span(f"phase {phase.value}", context=parent, attributes=attributes) as span:
        yield span


def start_llm_span(model: str, agent: str) -> Span | None:
    """A model call's span, child of whatever is current (the agent's task span)."""
    if not _enabled:
        return None
    return _tracer.start_span(f"llm {model}", attributes={"llm.model": model, "agent.name": agent})


def end_llm_span(span: Span | None, call: dict[str, Any]) -> None:
    if span is None:
        return
    span.set_attributes(
        {
            "llm.provider": call["provider"],
            "llm.token_count.prompt": call["prompt_tokens"],
            "llm.token_count.completion": call["completion_tokens"],
            "llm.token_count.total": call["total_tokens"],
            "llm.usage.estimated": call["estimated"],
            "llm.cost": call["cost"] if call["cost"] is not None else -1.0,
            "llm.cost.currency": call["currency"] or "",
        }
    )
    if call["interrupted"]:
        span.set_status(Status(StatusCode.ERROR, "interrupted"))
    span.end()


def record_ending(span: Span | None, status: str, message: str) -> None:
    """Mark the phase span with how the task ended, when it ended in this phase."""
    if span is None:
        return
    span.set_attribute("task.status", status)
    if status == "failed":
        # Redacted before it is cut: a cut URL would no longer be recognised as one.
        span.set_status(Status(StatusCode.ERROR, redacted_text(message)[:200]))
