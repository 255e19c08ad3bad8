"""What a failed crew's `error` event says: the cause, and what the operator can do about it."""

from __future__ import annotations

import json

from delivery.llm.failures import describe_failure
from delivery.llm.remote import MalformedStreamError


def raised_while_crewai_ran_its_flow(error: Exception) -> Exception:
    """`error` as it leaves a crew: CrewAI 1.15 runs each flow inside `except RuntimeError` (no
    running event loop), so every failure carries that as its implicit context."""
    try:
        try:
            raise RuntimeError("no running event loop")
        except RuntimeError:
            raise error  # noqa: B904 - as CrewAI does
    except type(error) as failure:
        return failure
    raise AssertionError("unreachable")


def test_an_unexpected_failure_names_its_own_cause_not_the_context_it_was_raised_in():
    message = describe_failure(raised_while_crewai_ran_its_flow(KeyError("deliverable")), "m")
    assert message == (
        "The crew failed unexpectedly; the server log has the traceback. (model m: KeyError: 'deliverable')"
    )


def test_an_empty_answer_says_so_and_what_to_check():
    empty = ValueError("Invalid response from LLM call - None or empty.")
    assert describe_failure(raised_while_crewai_ran_its_flow(empty), "m") == (
        "The model answered with no text at all: check that LLM_MODEL names a chat model the endpoint serves, "
        "then try again. (model m: ValueError: Invalid response from LLM call - None or empty.)"
    )


def test_a_stream_that_is_not_json_says_what_to_check():
    try:
        json.loads('{"choices": [')
    except json.JSONDecodeError as exc:
        malformed = MalformedStreamError(f"a streamed chunk is not JSON ({exc})")
        malformed.__cause__ = exc
    message = describe_failure(raised_while_crewai_ran_its_flow(malformed), "m")
    assert message.startswith("The model endpoint streamed something that is not an OpenAI-compatible answer")
    assert message.endswith(
        "(model m: MalformedStreamError: a streamed chunk is not JSON (Expecting value: line 1 column 14 (char 13)))"
    )


def test_an_explicit_cause_is_followed_to_its_end():
    try:
        try:
            raise OSError("disk full")
        except OSError as exc:
            raise RuntimeError("could not save") from exc
    except RuntimeError as failure:
        assert describe_failure(failure, "m").endswith("(model m: OSError: disk full)")


def test_answers_that_kept_breaking_off_mid_stream_say_what_to_check():
    import httpx

    cut = httpx.RemoteProtocolError("peer closed connection without sending complete message body")
    cut.attempts = 3  # type: ignore[attr-defined]  # as RetryingOpenAICompletion marks it
    assert describe_failure(raised_while_crewai_ran_its_flow(cut), "m") == (
        "The model endpoint kept breaking off its answers mid-stream: check the server and anything in between "
        "(a proxy, a load balancer), then try again. Tried 3 times with backoff (LLM_MAX_RETRIES=2). "
        "(model m: RemoteProtocolError: peer closed connection without sending complete message body)"
    )
