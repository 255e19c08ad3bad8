"""The one gate of every protected route: the address's limit first, then the key or stream
token, then the caller's own limits."""

from __future__ import annotations

import pytest

from delivery.errors import AuthenticationRequiredError, ForbiddenError, RateLimitedError
from delivery.security.gate import Gate
from delivery.settings import Settings

KEY = "unit-key-1"


def gate(**settings: str) -> Gate:
    values = {"rate_limit": "3/minute", "rate_limit_run_task": "100/minute", **settings}
    return Gate.from_settings(Settings.model_validate(values))


def test_an_address_is_limited_before_its_key_is_looked_at() -> None:
    g = gate(api_keys=KEY)
    for _ in range(3):
        with pytest.raises(ForbiddenError):
            g.admit({"x-api-key": "guess"}, "192.0.2.1")
    with pytest.raises(RateLimitedError) as limited:
        g.admit({"x-api-key": KEY}, "192.0.2.1")  # a valid key from that address too
    assert "per client address (RATE_LIMIT)" in str(limited.value) and limited.value.retry_after_s >= 1
    with pytest.raises(AuthenticationRequiredError):
        g.admit({}, "192.0.2.2")  # another address is checked as usual
    assert g.admit({"x-api-key": KEY}, "192.0.2.2").startswith("key:")


def test_a_key_is_limited_across_addresses() -> None:
    g = gate(api_keys=KEY)
    for n in range(3):
        g.admit({"authorization": f"Bearer {KEY}"}, f"192.0.2.{n}")
    with pytest.raises(RateLimitedError) as limited:
        g.admit({"authorization": f"Bearer {KEY}"}, "192.0.2.9")
    assert "per API key (RATE_LIMIT)" in str(limited.value)


def test_without_keys_a_request_counts_once_against_its_address() -> None:
    g = gate()
    assert [g.admit({}, "192.0.2.1") for _ in range(3)] == ["anonymous"] * 3
    with pytest.raises(RateLimitedError):
        g.admit({}, "192.0.2.1")


def test_new_tasks_have_their_own_limit_per_caller() -> None:
    g = gate(rate_limit="100/minute", rate_limit_run_task="2/minute")
    for _ in range(2):
        g.admit_new_task(g.admit({}, "192.0.2.1"), "192.0.2.1")
    g.admit({}, "192.0.2.1")  # other requests go on
    with pytest.raises(RateLimitedError) as limited:
        g.admit_new_task(g.admit({}, "192.0.2.1"), "192.0.2.1")
    assert "RATE_LIMIT_RUN_TASK" in str(limited.value)
    g.admit_new_task(g.admit({}, "192.0.2.2"), "192.0.2.2")


def test_a_stream_token_opens_its_task_only() -> None:
    g = gate(api_keys=KEY, rate_limit="100/minute")
    token = g.auth.stream_token("task-a")[0]
    assert g.admit({}, "192.0.2.1", stream_of="task-a", stream_token=token) == "token:task-a"
    with pytest.raises(ForbiddenError):
        g.admit({}, "192.0.2.1", stream_of="task-b", stream_token=token)
    with pytest.raises(AuthenticationRequiredError):
        g.admit({}, "192.0.2.1", stream_token=token)  # not a stream: a token opens nothing else


def test_counters_that_cannot_be_reached_do_not_fail_requests() -> None:
    g = gate(event_backend="redis", redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert g.admit({}, "192.0.2.1") == "anonymous"
