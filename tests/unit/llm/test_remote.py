"""The remote client's retries, in process against the fake OpenAI-compatible server: every
attempt is a model call of its own (counted, its text shown whole), announced by a retry event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from delivery.crew.compat import CpuTurns, stream_sink
from delivery.llm.prices import PriceTable
from delivery.llm.remote import RetryingOpenAICompletion
from delivery.llm.usage import UsageMeter, UsagePolicy, estimate_tokens
from delivery.tasks.records import TaskRecord
from tests.support.fake_openai import PROMPT_TOKENS, FakeOpenAI, Reply

FIRST = ["Thought: ", "the first ", "answer ", "breaks ", "off here"]
SECOND = ["A different ", "answer, ", "whole."]


@pytest.fixture
def cut_then_different() -> Iterator[FakeOpenAI]:
    """Its first answer breaks off after three pieces; the second is another text, whole."""
    replies = iter([Reply(FIRST, cut_after=3), Reply(SECOND)])
    fake = FakeOpenAI(reply=lambda _body: next(replies))
    yield fake
    fake.stop()


def client(fake: FakeOpenAI, attempts: int = 3) -> RetryingOpenAICompletion:
    return RetryingOpenAICompletion(
        model="fake",
        base_url=fake.url,
        api_key="not-needed",
        stream=True,
        timeout=10,
        max_retries=0,
        retry_attempts=attempts,
        retry_base_s=0.01,
    )


def test_a_cut_answer_is_retried_as_a_new_call_announced_by_an_event_and_never_spliced(cut_then_different):
    seen: list[Any] = []
    record = TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en")
    meter = UsageMeter(record, UsagePolicy(prices=PriceTable(), provider="openai", exact_chunks=False))
    with stream_sink(meter), stream_sink(lambda _source, event: seen.append(event)):
        answer = client(cut_then_different).call([{"role": "user", "content": "Write it"}])
    assert answer == "".join(SECOND)  # the new answer, whole
    kinds = [e.type for e in seen]
    retry = kinds.index("llm_call_retrying")
    assert kinds[:retry] == ["llm_call_started", *["llm_stream_chunk"] * 3, "llm_call_failed"]
    assert kinds[retry + 1 :] == ["llm_call_started", *["llm_stream_chunk"] * len(SECOND), "llm_call_completed"]
    event = seen[retry]
    assert (event.model, event.attempt, event.max_attempts) == ("fake", 2, 3)
    assert event.error.startswith("RemoteProtocolError: peer closed connection") and event.delay_s >= 0
    # What a viewer assembles after the retry event is the new answer from its start.
    assert "".join(e.chunk for e in seen[retry:] if e.type == "llm_stream_chunk") == answer
    # Both attempts are counted: the cut one with what it streamed (estimated), then the answer.
    cut, whole = record.usage["calls"]
    assert cut["interrupted"] and cut["estimated"]
    assert cut["completion_tokens"] == sum(estimate_tokens(piece) for piece in FIRST[:3])
    assert (whole["prompt_tokens"], whole["completion_tokens"], whole["interrupted"]) == (
        PROMPT_TOKENS,
        len(SECOND),
        False,
    )


def test_a_crew_waiting_out_a_retrys_backoff_lets_other_crews_take_their_turn(cut_then_different):
    """CpuTurns: the turn taken back at the failed attempt is given up for the backoff."""
    turns = CpuTurns()
    other_ran: list[bool] = []

    def other_crew() -> None:
        with turns.taken():
            pass

    def sink(_source: Any, event: Any) -> None:
        if event.type == "llm_call_retrying":  # the sinks run in order: the turn's sink went first
            other = threading.Thread(target=other_crew)
            other.start()
            other.join(2)
            other_ran.append(not other.is_alive())

    with turns.taken(), stream_sink(sink):
        client(cut_then_different).call([{"role": "user", "content": "Write it"}])
    assert other_ran == [True]
