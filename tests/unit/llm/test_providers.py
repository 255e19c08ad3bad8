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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:hunter2@h:8080/v1", "http://***@h:8080/v1"),
        ("https://hunter2@h/v1", "https://***@h/v1"),
        ("http://h/v1?api_key=hunter2&model=x", "http://h/v1?api_key=***&model=x"),
        ("http://h/v1?x=1&access_token=hunter2", "http://h/v1?x=1&access_token=***"),
        ("http://[::1]:9/v1", "http://[::1]:9/v1"),
        ("http://u:hunter2@[::1]:9/v1", "http://***@[::1]:9/v1"),
        ("http://u:hunter2@h:99999999/v1", "***"),  # unreadable: nothing of it is shown
    ],
)
def test_the_model_label_never_shows_credentials_written_into_the_base_url(url, shown):
    label = describe_model(settings(llm_provider="openai", openai_base_url=url, llm_model="m"))
    assert label == f"openai:m@{shown}" and "hunter2" not in label
