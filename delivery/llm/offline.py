"""What our in-process models (the local llama.cpp model and the scripted test double) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from delivery.crew.compat import (
    FINAL_ANSWER_PREFIX,
    BaseLLM,
    emit_call_completed,
    emit_call_started,
    emit_chunk,
    model_call,
)


class OfflineLLM(BaseLLM):
    """A streamed completion wrapped in CrewAI's call events and `Final Answer:` format, so
    viewers see exactly what a remote model's events would show. No tools."""

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
        with model_call():
            emit_call_started(self, messages, from_task, from_agent)

            def emit(chunk: str) -> None:
                emit_chunk(self, chunk, from_task, from_agent)

            response = FINAL_ANSWER_PREFIX + self.complete(messages, from_task, from_agent, emit)
            emit_call_completed(self, response, messages, from_task, from_agent)
            return response

    def complete(self, messages: Any, from_task: Any, from_agent: Any, emit: Callable[[str], None]) -> str:
        """Return the answer text, passing each token to `emit` as it is produced."""
        raise NotImplementedError

    def supports_function_calling(self) -> bool:
        return False

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        # CrewAI's default estimate logs a warning on every call; this is the same estimate, quietly.
        text = messages if isinstance(messages, str) else " ".join(str(m.get("content", "")) for m in messages)
        return len(text) // 4 + 1
