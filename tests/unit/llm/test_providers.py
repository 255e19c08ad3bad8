"""Provider selection and configuration errors."""

from __future__ import annotations

import pytest

from delivery.llm.providers import ProviderConfigError, check_provider, describe_model, resolve_provider
from delivery.settings import LLMProvider, Settings


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_auto_picks_dashscope_with_a_key_and_the_local_model_without():
    assert resolve_provider(settings(llm_provider="auto")) is LLMProvider.local
    assert resolve_provider(settings(llm_provider="auto", dashscope_api_key="sk-x")) is LLMProvider.dashscope
    assert resolve_provider(settings(llm_provider="scripted", dashscope_api_key="sk-x")) is LLMProvider.scripted
    assert describe_model(settings(llm_provider="auto", dashscope_api_key="sk-x")) == "dashscope:qwen-plus"
    assert (
        describe_model(settings(llm_provider="openai", openai_base_url="http://h/v1", llm_model="llama3"))
        == "openai:llama3@http://h/v1"
    )


def test_local_model_file_ships_with_the_package():
    check_provider(settings(llm_provider="local"))


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"llm_provider": "dashscope"}, "DASHSCOPE_API_KEY"),
        ({"llm_provider": "openai"}, "OPENAI_BASE_URL"),
        ({"llm_provider": "local", "local_model_path": "/nonexistent.gguf"}, "LOCAL_MODEL_PATH"),
    ],
)
def test_misconfigured_providers_say_what_to_set(values, fragment):
    with pytest.raises(ProviderConfigError, match=fragment):
        check_provider(settings(**values))


def test_unknown_provider_name_is_rejected():
    with pytest.raises(ValueError):
        settings(llm_provider="gpt-nine")
