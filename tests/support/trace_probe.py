"""Runs one task in process with tracing on and the SDK's in-memory exporter, then prints the
finished spans as JSON lines. A child process of the tracing test: a tracer provider is global."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from delivery.observability import tracing
from delivery.settings import Settings
from tests.support.lifecycle import Lifecycle


def main() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(Settings(_env_file=None), "multi-agent-delivery-api", exporter=exporter)
    with tempfile.TemporaryDirectory() as folder:
        lc = Lifecycle(Path(folder))
        record = lc.commands.submit("Build a reading list app", skip_confirmation=False)
        lc.run_next()
        lc.commands.confirm(record.task_id, approved=True, feedback=None)
        lc.run_next()
        stored = lc.store.get(record.task_id)
        start = lc.log(record.task_id)[0]
        print(
            json.dumps(
                {
                    "task": {
                        "task_id": record.task_id,
                        "trace_context": stored.trace_context,
                        "start_trace_id": start.metadata["trace_id"] if start.metadata else None,
                        "usage_calls": stored.usage["calls"],
                    }
                }
            )
        )
        lc.close()
    for span in exporter.get_finished_spans():
        context, parent = span.get_span_context(), span.parent
        assert context is not None
        print(
            json.dumps(
                {
                    "name": span.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent": f"{parent.span_id:016x}" if parent else None,
                    "attributes": dict(span.attributes or {}),
                    "service": span.resource.attributes.get("service.name"),
                }
            )
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
