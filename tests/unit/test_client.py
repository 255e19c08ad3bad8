"""delivery/client.py without a server: its models and its retry policy (tests/server/test_client.py
runs it against real servers)."""

from __future__ import annotations

import httpx
import pytest

import delivery.client as module
from delivery.client import DeliveryClient, DeliveryError, Event


def test_models_keep_fields_a_newer_server_adds() -> None:
    event = Event.model_validate(
        {
            "task_id": "t",
            "sequence": 1,
            "agent_name": "a",
            "event_type": "start",
            "content": "",
            "timestamp": "2026-11-23T00:00:00.000Z",
            "future": 1,
        }
    )
    assert event.model_extra == {"future": 1} and not event.terminal


def test_retryable_answers_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream answering 503 is retried with backoff, and after RECONNECT_FOR_S the server's own
    message is raised (an in-process transport: the server cannot be made to answer 503 on demand)."""
    monkeypatch.setattr(module, "RECONNECT_FOR_S", 0.5)
    calls = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"detail": "The database is unreachable; retry in a moment."})

    with (
        DeliveryClient("http://test", transport=httpx.MockTransport(busy)) as client,
        pytest.raises(DeliveryError) as caught,
    ):
        list(client.events("t1"))
    assert len(calls) >= 3 and "HTTP 503: The database is unreachable; retry in a moment." in str(caught.value)
