"""Usage, cost and budgets, in process: exact counts from the scripted double, estimates where a
server sends none, prices, and budgets that stop a run between two tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from delivery.errors import InvalidRequestError
from delivery.events import Event
from delivery.llm.prices import PriceTable, parse_prices
from delivery.llm.scripted import scripted_document, tokenize
from delivery.llm.usage import (
    BudgetExceeded,
    UsageMeter,
    UsagePolicy,
    estimate_tokens,
    message_text,
    summary,
    task_budget,
)
from delivery.tasks.records import TaskRecord, TaskStatus
from tests.support.lifecycle import Lifecycle

EUR_PRICES = '{"scripted-test-double": {"input": 2.0, "output": 8.0, "currency": "EUR"}}'


@pytest.fixture
def lifecycles(tmp_path: Path) -> Iterator[list[Lifecycle]]:
    made: list[Lifecycle] = []
    yield made
    for lc in made:
        lc.close()


def build(made: list[Lifecycle], folder: Path, **settings: Any) -> Lifecycle:
    lc = Lifecycle(folder, **settings)
    made.append(lc)
    return lc


def meta(event: Event) -> dict[str, Any]:
    assert event.metadata is not None, event
    return event.metadata


def test_scripted_runs_are_counted_exactly_per_call_agent_and_task(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path, llm_prices=EUR_PRICES)
    record = lc.commands.submit("Build a wiki with search and tags", skip_confirmation=True)
    lc.run_next()
    stored = lc.store.get(record.task_id)
    calls = stored.usage["calls"]
    assert [c["agent"] for c in calls] == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    for call in calls:
        spec_document = scripted_document(
            {
                "ProductManager": "requirements_analysis",
                "QAEngineer": "test_plan",
                "SoftwareDeveloper": "technical_design",
                "Coordinator": "delivery_review",
            }[call["agent"]],
            "Build a wiki with search and tags",
            "en",
        )
        assert call["completion_tokens"] == len(tokenize(spec_document))  # what the double emitted
        assert call["prompt_tokens"] > 100 and not call["estimated"] and not call["interrupted"]
        assert call["model"] == "scripted-test-double" and call["provider"] == "scripted"
        assert call["cost"] == round((call["prompt_tokens"] * 2.0 + call["completion_tokens"] * 8.0) / 1e6, 10)
        assert call["currency"] == "EUR"
    report = summary(stored.usage)
    total = report["total"]
    assert (
        total["total_tokens"]
        == sum(c["total_tokens"] for c in calls)
        == total["prompt_tokens"] + total["completion_tokens"]
    )
    assert total["calls"] == 4 and total["currency"] == "EUR" and not total["estimated"]
    assert total["cost"] == pytest.approx(sum(c["cost"] for c in calls))
    assert list(report["agents"]) == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    assert report["price_note"] is None


def test_the_prompt_count_is_the_doubles_own_tokenizer_over_what_it_was_sent(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path)
    seen: list[str] = []
    from delivery.crew.compat import stream_sink

    record = lc.commands.submit("Build a recipe box", skip_confirmation=True)
    with stream_sink(
        lambda source, event: seen.append(message_text(event.messages)) if event.type == "llm_call_started" else None
    ):
        lc.run_next()
    calls = lc.store.get(record.task_id).usage["calls"]
    assert [c["prompt_tokens"] for c in calls] == [len(tokenize(text)) for text in seen]


def test_revision_rounds_add_up(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path)
    record = lc.commands.submit("Build a recipe box", skip_confirmation=False)
    lc.run_next()
    lc.commands.confirm(record.task_id, approved=False, feedback="add a shopping list")
    lc.run_next()
    lc.commands.confirm(record.task_id, approved=True, feedback=None)
    lc.run_next()
    calls = lc.store.get(record.task_id).usage["calls"]
    assert [c["agent"] for c in calls] == [
        "ProductManager",
        "ProductManager",
        "QAEngineer",
        "SoftwareDeveloper",
        "Coordinator",
    ]
    agents = summary(lc.store.get(record.task_id).usage)["agents"]
    assert agents["ProductManager"]["calls"] == 2
    assert agents["ProductManager"]["total_tokens"] == calls[0]["total_tokens"] + calls[1]["total_tokens"]
    # Each step_end carries its agent's usage so far; the terminal event the task's.
    step_ends = [e for e in lc.log(record.task_id) if e.event_type == "step_end"]
    assert meta(step_ends[1])["usage"]["calls"] == 2  # the second round of the ProductManager
    assert meta(lc.log(record.task_id)[-1])["usage"] == summary(lc.store.get(record.task_id).usage)["total"]


def test_a_budget_stops_the_run_at_the_token_that_passes_it(lifecycles, tmp_path):
    probe = build(lifecycles, tmp_path / "probe")
    first = probe.commands.submit("Build a wiki", skip_confirmation=True)
    probe.run_next()
    calls = probe.store.get(first.task_id).usage["calls"]
    # A limit in the middle of the QA engineer's generation.
    limit = calls[0]["total_tokens"] + calls[1]["prompt_tokens"] + 40
    lc = build(lifecycles, tmp_path / "limited", max_tokens_per_task=limit)
    record = lc.commands.submit("Build a wiki", skip_confirmation=True)
    lc.run_next()
    stored = lc.store.get(record.task_id)
    assert stored.status is TaskStatus.failed
    log = lc.log(record.task_id)
    assert [e.event_type for e in log if e.event_type in ("end", "error", "cancelled")] == ["error"]
    error = log[-1]
    assert error.agent_name == "QAEngineer"
    assert (
        f"used {limit + 1} tokens" in error.content
        and f"budget of {limit} tokens (MAX_TOKENS_PER_TASK)" in error.content
        and "Raise MAX_TOKENS_PER_TASK" in error.content
    )
    qa_thoughts = [e for e in log if e.event_type == "thought" and e.agent_name == "QAEngineer"]
    assert len(qa_thoughts) == 40  # the 41st token was not published
    interrupted = stored.usage["calls"][-1]
    assert (
        interrupted["agent"] == "QAEngineer" and interrupted["interrupted"] and interrupted["completion_tokens"] == 41
    )
    assert not interrupted["estimated"]  # the double announced its prompt: still exact
    assert meta(error)["usage"]["total_tokens"] == limit + 1 == summary(stored.usage)["total"]["total_tokens"]
    assert "SoftwareDeveloper" not in {c["agent"] for c in stored.usage["calls"]}


def test_a_cost_budget_stops_the_run_too_and_says_which_setting_raises_it(lifecycles, tmp_path):
    lc = build(lifecycles, tmp_path, llm_prices=EUR_PRICES)
    record = lc.commands.submit("Build a wiki", skip_confirmation=True, max_cost=0.001)
    lc.run_next()
    error = lc.log(record.task_id)[-1]
    assert error.event_type == "error"
    assert "more than its budget of 0.001 EUR (budget.max_cost)" in error.content
    assert "Submit it again with a larger `budget.max_cost`" in error.content
    assert lc.store.get(record.task_id).budget == {"max_cost": 0.001, "cost_setting": "budget.max_cost"}


def test_a_request_may_only_lower_the_servers_budget():
    assert task_budget(0, 0, None, None) == {}
    assert task_budget(1000, 0, None, None) == {"max_tokens": 1000, "tokens_setting": "MAX_TOKENS_PER_TASK"}
    assert task_budget(1000, 0.5, 200, None) == {
        "max_tokens": 200,
        "tokens_setting": "budget.max_tokens",
        "max_cost": 0.5,
        "cost_setting": "MAX_COST_PER_TASK",
    }
    assert task_budget(0, 0, 5, 0.01)["max_cost"] == 0.01  # no server limit: any request applies
    with pytest.raises(
        InvalidRequestError,
        match=r"budget.max_tokens=2000 is above this server's "
        r"MAX_TOKENS_PER_TASK=1000",
    ):
        task_budget(1000, 0, 2000, None)


def test_prices_come_from_the_defaults_and_llm_prices_and_unknown_models_say_so():
    table = PriceTable(parse_prices('{"llama3": {"input": 0.2, "output": 0.6, "currency": "USD"}}'))
    assert table.price("qwen-plus").currency == "CNY"  # type: ignore[union-attr]
    assert table.price("openai/gpt-4o-mini").input == 0.15  # type: ignore[union-attr]
    assert table.price("llama3").output == 0.6  # type: ignore[union-attr]
    assert table.price("mystery-model") is None
    for bad in ("[1]", '{"m": {"input": -1, "output": 1, "currency": "USD"}}', '{"m": {"input": 1}}', "not json"):
        with pytest.raises(ValueError, match="LLM_PRICES must be a JSON object"):
            parse_prices(bad)


# -- what a remote server reports, or does not -------------------------------------------------


def remote_meter(record: TaskRecord) -> UsageMeter:
    return UsageMeter(record, UsagePolicy(prices=PriceTable(), provider="openai", exact_chunks=False))


def event(kind: str, **fields: Any) -> SimpleNamespace:
    return SimpleNamespace(type=kind, **fields)


def record() -> TaskRecord:
    return TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en")


def test_a_servers_usage_is_taken_as_exact():
    rec = record()
    meter = remote_meter(rec)
    meter(object(), event("llm_call_started", model="gpt-4o-mini", messages=[{"content": "x" * 400}]))
    for word in ("Hello", " world", "!"):
        meter(object(), event("llm_stream_chunk", chunk=word))
    meter(
        object(),
        event("llm_call_completed", usage={"prompt_tokens": 120, "completion_tokens": 3}, response="Hello world!"),
    )
    (call,) = rec.usage["calls"]
    assert (call["prompt_tokens"], call["completion_tokens"], call["estimated"]) == (120, 3, False)
    assert call["cost"] == round((120 * 0.15 + 3 * 0.6) / 1e6, 10) and call["currency"] == "USD"


def test_without_the_servers_usage_the_call_is_estimated_and_says_so():
    rec = record()
    meter = remote_meter(rec)
    prompt = [{"role": "user", "content": "Write a plan. 写一个计划。"}]
    meter(object(), event("llm_call_started", model="llama3", messages=prompt))
    meter(object(), event("llm_stream_chunk", chunk="The plan"))
    meter(object(), event("llm_call_completed", usage=None, response="The plan"))
    (call,) = rec.usage["calls"]
    assert call["prompt_tokens"] == estimate_tokens("Write a plan. 写一个计划。") and call["estimated"]
    assert call["completion_tokens"] == estimate_tokens("The plan")
    assert call["cost"] is None and call["currency"] is None
    report = summary(rec.usage)
    assert report["total"]["estimated"] and report["total"]["cost"] is None
    assert report["price_note"] and "llama3" in report["price_note"] and "LLM_PRICES" in report["price_note"]


def test_a_prompt_that_alone_passes_the_budget_stops_before_the_model_is_asked_and_costs_nothing():
    rec = record()
    rec.budget = {"max_tokens": 10, "tokens_setting": "MAX_TOKENS_PER_TASK"}
    meter = remote_meter(rec)
    with pytest.raises(BudgetExceeded) as stopped:
        meter(object(), event("llm_call_started", model="gpt-4o", messages="x" * 400))
    assert str(stopped.value) == (
        "The task has used 0 tokens; its next model call would send 100 prompt tokens and pass its budget of 10 "
        "tokens (MAX_TOKENS_PER_TASK), so it was stopped before calling the model. Raise MAX_TOKENS_PER_TASK "
        "(0 = no limit) and submit it again."
    )
    assert rec.usage == {}  # the model was never asked: nothing was spent


# -- every attempt of a retried call counts --------------------------------------------------


def test_a_failed_attempt_is_counted_with_what_it_streamed_and_the_retry_as_a_call_of_its_own():
    """A stream cut mid-answer: the server never reports usage for it, so its prompt and what it
    streamed are estimated and kept; the retry that follows is a second call, not an overwrite."""
    rec = record()
    meter = remote_meter(rec)
    prompt = [{"role": "user", "content": "y" * 80}]
    meter(object(), event("llm_call_started", model="gpt-4o-mini", messages=prompt))
    for word in ("The first", " answer", " broke"):
        meter(object(), event("llm_stream_chunk", chunk=word))
    meter(object(), event("llm_call_failed", error="OpenAI API call failed: peer closed connection"))
    meter(object(), event("llm_call_started", model="gpt-4o-mini", messages=prompt))
    meter(object(), event("llm_stream_chunk", chunk="Another answer"))
    meter(
        object(),
        event("llm_call_completed", usage={"prompt_tokens": 20, "completion_tokens": 2}, response="Another answer"),
    )
    cut, retried = rec.usage["calls"]
    streamed = estimate_tokens("The first") + estimate_tokens(" answer") + estimate_tokens(" broke")
    assert (cut["prompt_tokens"], cut["completion_tokens"]) == (20, streamed)
    assert cut["interrupted"] and cut["estimated"]
    assert cut["cost"] == round((20 * 0.15 + streamed * 0.6) / 1e6, 10)
    assert (retried["prompt_tokens"], retried["completion_tokens"], retried["interrupted"]) == (20, 2, False)
    assert summary(rec.usage)["total"]["calls"] == 2
    assert summary(rec.usage)["total"]["total_tokens"] == 20 + streamed + 22


def test_a_call_started_before_the_last_one_ended_counts_the_last_one_instead_of_overwriting_it():
    rec = record()
    meter = remote_meter(rec)
    meter(object(), event("llm_call_started", model="gpt-4o-mini", messages="z" * 40))
    meter(object(), event("llm_stream_chunk", chunk="half an answer"))
    meter(object(), event("llm_call_started", model="gpt-4o-mini", messages="z" * 40))
    meter.close()
    first, second = rec.usage["calls"]
    assert first["completion_tokens"] == estimate_tokens("half an answer") and first["interrupted"]
    assert second["completion_tokens"] == 0 and second["interrupted"]


def test_failed_attempts_count_towards_the_budget():
    rec = record()
    rec.budget = {"max_tokens": 250, "tokens_setting": "MAX_TOKENS_PER_TASK"}
    meter = remote_meter(rec)
    for _ in range(2):  # each attempt sends 100 prompt tokens: a third would pass the budget
        meter(object(), event("llm_call_started", model="gpt-4o-mini", messages="x" * 400))
        meter(object(), event("llm_call_failed", error="OpenAI API call failed: overloaded"))
    with pytest.raises(BudgetExceeded, match="has used 200 tokens"):
        meter(object(), event("llm_call_started", model="gpt-4o-mini", messages="x" * 400))
    assert [c["interrupted"] for c in rec.usage["calls"]] == [True, True]
