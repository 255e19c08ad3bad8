"""The CLI's live view of a task, fed events directly."""

from __future__ import annotations

from delivery.cli import LiveView
from delivery.client import Event


def event(sequence: int, event_type: str, content: str = "", agent: str = "ProductManager") -> Event:
    return Event(
        task_id="t",
        sequence=sequence,
        agent_name=agent,
        event_type=event_type,
        content=content,
        timestamp="2026-01-01T00:00:00.000Z",
    )


def test_a_retried_model_call_shows_only_its_new_answer():
    view = LiveView("t", [("ProductManager", "REQUIREMENTS.md")])
    for e in [
        event(1, "agent_start"),
        event(2, "action", "Calling model m"),
        event(3, "thought", "The first answer br"),
        event(4, "model_retry", "The model call failed (ReadError); attempt 2 of 4 in 1 s"),
        event(5, "action", "Calling model m"),
        event(6, "thought", "Another "),
        event(7, "thought", "answer"),
    ]:
        view.apply(e)
    assert view.tokens == "Another answer"
