"""Finished streams held for replay under STREAM_MEMORY_MB: what one held event costs (measured
with tracemalloc, and as the bound counts it) and whether the bound holds while 1,000 tasks finish
in a burst. In process, on realistic logs (a scripted run's shape), with every event's SSE frame
encoded, as it is once a viewer has read it."""

from __future__ import annotations

import gc
import time
import tracemalloc

from delivery.streaming.memory import MemoryEventBackend

TOKENS_PER_AGENT = 220  # a scripted run publishes about 900 events
DOCUMENT = "## Section\n\n" + "Requirement text with acceptance criteria. " * 90  # ~4 KB per deliverable
AGENTS = ("ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator")


def publish_run(backend: MemoryEventBackend, task_id: str) -> int:
    """One finished task's log; returns its number of events."""
    backend.open(task_id)
    publish = backend.publish
    publish(task_id, "System", "start", "Task started", {"total_steps": 4})
    for step, agent in enumerate(AGENTS, 1):
        publish(task_id, agent, "agent_start", f"{agent} starts", {"step": step})
        for i in range(TOKENS_PER_AGENT):
            publish(task_id, agent, "thought", f" token{i % 97}", None)
        publish(task_id, agent, "output", DOCUMENT, {"deliverable": agent.lower(), "bytes": len(DOCUMENT)})
        publish(task_id, agent, "step_end", "done", {"completed": step, "usage": {"prompt": 900, "completion": 880}})
    publish(task_id, "System", "end", "Task finished", {"verdict": "GO", "usage": {"total": 7120}})
    for event in backend.events(task_id):
        event.sse  # noqa: B018 - a viewer read it: the frame is cached, as in the service
    return len(backend.events(task_id))


def bytes_per_event(tasks: int = 50) -> dict:
    backend = MemoryEventBackend()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    events = sum(publish_run(backend, f"t{i}") for i in range(tasks))
    gc.collect()
    measured = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "events": events,
        "measured_bytes_per_event": round(measured / events, 1),
        "counted_bytes_per_event": round(backend.finished_bytes / events, 1),
        "counted_over_measured": round(backend.finished_bytes / measured, 3),
    }


def burst(tasks: int, bound_mb: float) -> dict:
    bound = int(bound_mb * 1024 * 1024)
    backend = MemoryEventBackend(memory_limit_bytes=bound)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    counted_peak = 0
    events = 0
    for i in range(tasks):
        events += publish_run(backend, f"burst-{i}")
        counted_peak = max(counted_peak, backend.finished_bytes)
    elapsed = time.perf_counter() - started
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(backend.holds(f"burst-{i}") for i in range(tasks))
    return {
        "tasks": tasks,
        "events": events,
        "bound_mb": bound_mb,
        "counted_peak_mb": round(counted_peak / 2**20, 2),
        "traced_after_mb": round((current - base) / 2**20, 2),
        "traced_peak_mb": round((peak - base) / 2**20, 2),
        "tasks_held": held,
        "tasks_let_go": tasks - held,
        "seconds": round(elapsed, 2),
    }


def stream_memory(quick: bool) -> dict:
    return {"per_event": bytes_per_event(), "burst": burst(200 if quick else 1000, 16.0)}
