"""What a task's model calls used and cost, per agent and in total, and the budget that stops it.

Accounting happens in one place: a `UsageMeter`, registered as a CrewAI stream sink around a
phase's crews. It sees every model call's events on the thread that makes the call
(llm_call_started, llm_stream_chunk, llm_call_completed), from every provider, so usage is counted
the same way for remote, local and scripted models, and a budget can stop a run between two
tokens. The calls are kept in the task record (`record.usage["calls"]`), the one source of truth:
totals per agent and for the task are derived from them, and revision rounds and phases run by
other processes add up.

Where the counts come from:
- remote (OpenAI-compatible, DashScope): CrewAI asks for usage in the stream
  (`stream_options.include_usage`); when the server sends it the call is exact, otherwise it is
  estimated from the text and marked `estimated`;
- local (llama.cpp): the model's own tokenizer for the prompt, one token per generated piece;
- scripted: the double's own tokenizer, for the prompt and for what it emits.
While a call streams, its completion is counted chunk by chunk (one token per chunk for local
and scripted, estimated for remote) so that a budget stops it at once. A call cut short (budget,
cancel, failure) is kept with what it had used, marked `interrupted`. Every attempt of a retried
call is a call of its own (remote.py): a failed one counts its prompt and what it had streamed.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from delivery.crew.compat import CrewEvent
from delivery.crew.roster import ROSTER
from delivery.errors import InvalidRequestError
from delivery.llm.prices import Price, PriceTable
from delivery.observability import tracing
from delivery.tasks.records import TaskRecord

_CJK = re.compile(r"[\u3000-\u9fff\uf900-\ufaff\uff00-\uffef]")
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per CJK character, one per ~4 other characters."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def message_text(messages: Any) -> str:
    """The text of a model call's messages (a string, or OpenAI-style dicts)."""
    if isinstance(messages, str):
        return messages
    parts = []
    for message in messages or []:
        content = message.get("content", "") if isinstance(message, dict) else message
        parts.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    return "\n".join(parts)


def cost_of(price: Price | None, prompt: int, completion: int) -> float | None:
    if price is None:
        return None
    return round((prompt * price.input + completion * price.output) / 1_000_000, 10)


def totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over calls: tokens, calls, cost (None when any call's model has no known price)."""
    out: dict[str, Any] = {name: sum(c[name] for c in calls) for name in TOKEN_FIELDS}
    out["calls"] = len(calls)
    out["estimated"] = any(c["estimated"] for c in calls)
    currencies = {c["currency"] for c in calls}
    priced = calls and all(c["cost"] is not None for c in calls) and len(currencies) == 1
    out["cost"] = round(sum(c["cost"] for c in calls), 10) if priced else (0.0 if not calls else None)
    out["currency"] = currencies.pop() if priced else None
    return out


def summary(usage: dict[str, Any]) -> dict[str, Any]:
    """What the API and events report: totals per agent (in pipeline order) and for the task."""
    calls = usage.get("calls", [])
    agents = {
        name: totals([c for c in calls if c["agent"] == name])
        for name in [*ROSTER.names, *sorted({c["agent"] for c in calls} - set(ROSTER.names))]
        if any(c["agent"] == name for c in calls)
    }
    unpriced = sorted({c["model"] for c in calls if c["cost"] is None})
    note = (
        f"No price is known for {', '.join(unpriced)}: tokens are counted, cost is not. Add the model to "
        "LLM_PRICES to get a cost."
        if unpriced
        else None
    )
    return {"agents": agents, "total": totals(calls), "price_note": note}


@dataclass(frozen=True)
class UsagePolicy:
    """How this process counts: its price table, its provider, and whether a streamed chunk is
    exactly one token (the local and scripted models) or has to be estimated (remote servers)."""

    prices: PriceTable
    provider: str
    exact_chunks: bool


class Budget:
    """A task's limits (record.budget), and the setting to name when one is reached."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.max_tokens: int | None = spec.get("max_tokens")
        self.max_cost: float | None = spec.get("max_cost")
        self.tokens_setting: str = spec.get("tokens_setting", "MAX_TOKENS_PER_TASK")
        self.cost_setting: str = spec.get("cost_setting", "MAX_COST_PER_TASK")

    @property
    def unlimited(self) -> bool:
        return self.max_tokens is None and self.max_cost is None


class BudgetExceeded(BaseException):
    """Raised on the agent thread when the task's usage passes its budget (a BaseException, so
    CrewAI's `except Exception` paths do not swallow it)."""


class UsageMeter:
    """Counts one phase's model calls into `record.usage` and stops the task at its budget."""

    def __init__(
        self, record: TaskRecord, policy: UsagePolicy, on_call: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """`on_call(call)` is told about each call as it is recorded (metrics, traces)."""
        self.record = record
        self._policy = policy
        self._budget = Budget(record.budget)
        self._on_call = on_call
        self._agent = record.current_agent or ROSTER.analyst.name
        self._call: dict[str, Any] | None = None  # in flight: model, started, prompt, live, price
        self._lock = threading.Lock()  # the call in flight is taken once: completed, closed or stopped
        calls = record.usage.get("calls", [])
        self._prompt_so_far = sum(c["prompt_tokens"] for c in calls)
        self._completion_so_far = sum(c["completion_tokens"] for c in calls)
        self._cost_so_far = sum(c["cost"] or 0.0 for c in calls)

    # -- the stream sink ---------------------------------------------------------------------------

    def __call__(self, source: Any, event: Any) -> None:
        kind = getattr(event, "type", "")
        if kind == CrewEvent.llm_stream_chunk.value:  # the hot one: every token
            call = self._call
            if call is not None and event.chunk:
                call["live"] += 1 if self._policy.exact_chunks else estimate_tokens(event.chunk)
                if not self._budget.unlimited:
                    self._check(call)
        elif kind == CrewEvent.task_started.value:
            role = getattr(getattr(event.task, "agent", None), "role", None)
            spec = ROSTER.by_role(role) if role else None
            self._agent = spec.name if spec else (role or self._agent)
        elif kind == CrewEvent.llm_call_started.value:
            unfinished = self._take_call()  # never seen to end: counted, not overwritten
            if unfinished is not None:
                self._record(unfinished, None, "", interrupted=True)
            model = str(getattr(event, "model", "") or "unknown")
            announced = getattr(source, "announced_prompt_tokens", None)  # our in-process models know it
            exact = isinstance(announced, int)
            self._call = {
                "model": model,
                "started": time.monotonic(),
                "live": 0,
                "prompt_exact": exact,
                "prompt": announced if exact else estimate_tokens(message_text(getattr(event, "messages", None))),
                "price": self._policy.prices.price(model),
                "span": None,
            }
            if not self._budget.unlimited:
                self._check(self._call)  # a prompt alone can pass the budget: the model is not asked
            self._call["span"] = tracing.start_llm_span(model, self._agent)
        elif kind == CrewEvent.llm_call_completed.value:
            call = self._take_call()
            if call is not None:
                self._record(call, getattr(event, "usage", None), getattr(event, "response", ""))
                if not self._budget.unlimited:
                    self._check(None)
        elif kind == CrewEvent.llm_call_failed.value:
            # An attempt that failed (refused, timed out, its stream cut mid-answer) was still
            # sent, and may have streamed: a server reports no usage for a call it did not finish,
            # so its prompt is the estimate taken at the start and its completion what it streamed,
            # estimated chunk by chunk as above (exact for our in-process models). Whether the
            # provider bills a refused attempt is not known here: counting it errs on the side of
            # the budget.
            call = self._take_call()
            if call is not None:
                self._record(call, None, "", interrupted=True)
                if not self._budget.unlimited:
                    self._check(None)

    def close(self) -> None:
        """The phase ended (any thread may say so): a call still in flight was cut short; keep
        what it used."""
        call = self._take_call()
        if call is not None:
            self._record(call, None, "", interrupted=True)

    # -- recording -----------------------------------------------------------------------------------

    def _take_call(self) -> dict[str, Any] | None:
        with self._lock:
            call, self._call = self._call, None
        return call

    def _record(
        self, call: dict[str, Any], reported: dict[str, Any] | None, response: Any, interrupted: bool = False
    ) -> None:
        exact = bool(reported) and reported.get("prompt_tokens") is not None  # type: ignore[union-attr]
        if exact:
            assert reported is not None
            prompt, completion = int(reported["prompt_tokens"] or 0), int(reported.get("completion_tokens") or 0)
        else:
            text = response if isinstance(response, str) else str(response or "")
            prompt = call["prompt"]
            completion = call["live"] if (call["live"] or interrupted) else estimate_tokens(text)
        price: Price | None = call["price"]
        entry = {
            "agent": self._agent,
            "model": call["model"],
            "provider": self._policy.provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "duration_s": round(time.monotonic() - call["started"], 3),
            "estimated": not exact and not (interrupted and call["prompt_exact"] and self._policy.exact_chunks),
            "interrupted": interrupted,
            "cost": cost_of(price, prompt, completion),
            "currency": price.currency if price else None,
        }
        tracing.end_llm_span(call["span"], entry)
        # Copy on write: a save on another thread sees the old list or the new one, never half of one.
        self.record.usage = {**self.record.usage, "calls": [*self.record.usage.get("calls", []), entry]}
        self._prompt_so_far += prompt
        self._completion_so_far += completion
        self._cost_so_far += entry["cost"] or 0.0
        if self._on_call is not None:
            self._on_call(entry)

    # -- the budget ------------------------------------------------------------------------------

    def _check(self, call: dict[str, Any] | None) -> None:
        budget = self._budget
        prompt = self._prompt_so_far + (call["prompt"] if call else 0)
        completion = self._completion_so_far + (call["live"] if call else 0)
        used = prompt + completion
        if budget.max_tokens is not None and used > budget.max_tokens:
            self._stop(
                call,
                f"{used} tokens ({prompt} prompt + {completion} completion)",
                f"its budget of {budget.max_tokens} tokens ({budget.tokens_setting})",
                budget.tokens_setting,
            )
        if budget.max_cost is not None:
            cost = self._cost_so_far + ((cost_of(call["price"], call["prompt"], call["live"]) or 0.0) if call else 0.0)
            if cost > budget.max_cost:
                currency = (call["price"].currency if call and call["price"] else None) or next(
                    (c["currency"] for c in self.record.usage.get("calls", []) if c["currency"]), ""
                )
                self._stop(
                    call,
                    f"{cost:.6f} {currency} ({used} tokens)",
                    f"its budget of {budget.max_cost:g} {currency} ({budget.cost_setting})",
                    budget.cost_setting,
                )

    def _stop(self, call: dict[str, Any] | None, used: str, limit: str, setting: str) -> None:
        hint = _raise_hint(setting)
        if call is not None and self._take_call() is call:
            if call["live"] == 0:  # only its prompt so far: the model was not asked, nothing was spent
                spent = self._prompt_so_far + self._completion_so_far
                raise BudgetExceeded(
                    f"The task has used {spent} tokens; its next model call would send {call['prompt']} prompt "
                    f"tokens and pass {limit}, so it was stopped before calling the model. {hint}"
                )
            self._record(call, None, "", interrupted=True)
        raise BudgetExceeded(f"The task used {used}, more than {limit}, and was stopped. {hint}")


def _raise_hint(setting: str) -> str:
    if setting.startswith("budget."):
        return f"Submit it again with a larger `{setting}` in the request body."
    return f"Raise {setting} (0 = no limit) and submit it again."


def task_budget(
    max_tokens_per_task: int, max_cost_per_task: float, requested_tokens: int | None, requested_cost: float | None
) -> dict[str, Any]:
    """The limits a new task runs under: the request's own (`budget` in run_task's body) where it
    gives one, else the server's (MAX_TOKENS_PER_TASK, MAX_COST_PER_TASK; 0 = none). A request may
    only lower the server's limits."""
    budget: dict[str, Any] = {}
    for kind, server, requested, setting in (
        ("tokens", max_tokens_per_task, requested_tokens, "MAX_TOKENS_PER_TASK"),
        ("cost", max_cost_per_task, requested_cost, "MAX_COST_PER_TASK"),
    ):
        if requested is not None:
            if server and requested > server:
                raise InvalidRequestError(
                    f"budget.max_{kind}={requested:g} is above this server's {setting}={server:g}; ask for at "
                    f"most {server:g}, or leave budget.max_{kind} out to get the server's limit."
                )
            budget[f"max_{kind}"], budget[f"{kind}_setting"] = requested, f"budget.max_{kind}"
        elif server:
            budget[f"max_{kind}"], budget[f"{kind}_setting"] = server, setting
    return budget


def agent_usage(record: TaskRecord, agent: str) -> dict[str, Any]:
    """One agent's totals in this task so far (every revision round of it included)."""
    return totals([c for c in record.usage.get("calls", []) if c["agent"] == agent])
