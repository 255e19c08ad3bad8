"""compat.CpuTurns: one crew at a time between model calls, with real CrewAI model-call events."""

from __future__ import annotations

import threading

import pytest

from delivery.crew import compat
from delivery.llm.scripted import ScriptedLLM


def model() -> ScriptedLLM:
    return ScriptedLLM(model="scripted-test-double", agent_name="QAEngineer", requirement="Build a wiki")


def test_a_second_crew_waits_for_its_turn_until_the_first_calls_its_model():
    turns = compat.CpuTurns()
    b_entered, b_called = threading.Event(), threading.Event()

    def crew_b() -> None:
        with turns.taken():
            b_entered.set()
            model().call("hello")
            b_called.set()

    with turns.taken():
        b = threading.Thread(target=crew_b)
        b.start()
        assert not b_entered.wait(0.3), "B ran while A held its turn"
        model().call("hello")  # gives the turn to B, then takes it back once B calls its model
        assert b_entered.is_set(), "A's call ended and A went on before B had its turn"
    b.join(timeout=30)
    assert b_called.is_set() and not b.is_alive()


def test_a_crew_that_raises_gives_its_turn_back():
    turns = compat.CpuTurns()
    with pytest.raises(RuntimeError), turns.taken():
        raise RuntimeError("the crew failed")
    entered = threading.Event()

    def other() -> None:
        with turns.taken():
            entered.set()

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=5)
    assert entered.is_set()


def test_a_crew_stopped_during_its_model_call_does_not_give_back_a_turn_it_no_longer_holds():
    turns = compat.CpuTurns()

    def stop_at_first_token(_source: object, event: object) -> None:
        if getattr(event, "type", "") == compat.CrewEvent.llm_stream_chunk.value:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError), turns.taken(), compat.stream_sink(stop_at_first_token):
        model().call("hello")
    # Released once, at the call's start: one turn is free, not two.
    assert turns._turn.acquire(blocking=False)
    assert not turns._turn.acquire(blocking=False)
