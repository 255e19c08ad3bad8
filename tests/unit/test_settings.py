"""Configuration: one settings object, every field documented for operators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from delivery.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_and_the_configuration_page_list_every_setting():
    example = (ROOT / ".env.example").read_text()
    page = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert listed == fields
    missing_from_page = [f for f in fields if f"`{f}`" not in page]
    assert not missing_from_page


def test_env_example_values_are_valid_settings(monkeypatch):
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            if value:
                monkeypatch.setenv(name, value)
    Settings(_env_file=None)


def test_out_of_range_values_are_rejected_with_the_field_name():
    with pytest.raises(ValidationError, match="max_concurrent_tasks"):
        Settings(_env_file=None, max_concurrent_tasks=0)
    with pytest.raises(ValidationError, match="sse_heartbeat_s"):
        Settings(_env_file=None, sse_heartbeat_s=0)


def test_celery_without_shared_events_is_refused_with_what_to_set():
    with pytest.raises(ValidationError, match="set EVENT_BACKEND=redis"):
        Settings(_env_file=None, executor="celery")
    assert Settings(_env_file=None, executor="celery", event_backend="redis").executor.value == "celery"
