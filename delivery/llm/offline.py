"""What our in-process models (the local llama.cpp model and the scripted test double) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import PrivateAttr

from delivery.crew.compat import (
    FINAL_ANSWER_PREFIX,
    BaseLLM,
    emit_call_completed,
    emit_call_started,
    emit_chunk,
    model_call,
)


class Completion(NamedTuple):
    text: str
    completion_tokens: int  # exactly what the model generated, by its own tokenizer


class OfflineLLM(BaseLLM):
    """A streamed completion wrapped in CrewAI's call events and `Final Answer:` format, so
    viewers see exactly what a remote model's events would show. No tools. Usage is exact: the
    prompt's tokens are announced before the call starts (`announced_prompt_tokens`, read by the
    usage meter) and both counts travel in the call's completed event."""

    _announced_prompt_tokens: int | None = PrivateAttr(default=None)

    @property
    def announced_prompt_tokens(self) -> int | None:
        return self._announced_prompt_tokens

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        prompt = self.prompt(messages, from_task, from_agent)
        prompt_tokens = self.count_tokens(prompt)
        self._announced_prompt_tokens = prompt_tokens
        with model_call():
            emit_call_started(self, messages, from_task, from_agent)

            def emit(chunk: str) -> None:
                emit_chunk(self, chunk, from_task, from_agent)

            completion = self.complete(prompt, emit)
            response = FINAL_ANSWER_PREFIX + completion.text
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": prompt_tokens + completion.completion_tokens,
            }
            emit_call_completed(self, response, messages, from_task, from_agent, usage)
            return response

    def prompt(self, messages: Any, from_task: Any, from_agent: Any) -> str:
        """The exact text the model reads for this call."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` by the model's own tokenizer."""
        raise NotImplementedError

    def complete(self, prompt: str, emit: Callable[[str], None]) -> Completion:
        """Generate the answer, passing each token's text to `emit` as it is produced."""
        raise NotImplementedError

    def supports_function_calling(self) -> bool:
        return False

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        # CrewAI's default estimate logs a warning on every call; this is the same estimate, quietly.
        text = messages if isinstance(messages, str) else " ".join(str(m.get("content", "")) for m in messages)
        return len(text) // 4 + 1
