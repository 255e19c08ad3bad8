"""Imported before CrewAI everywhere: its telemetry and tracing stay off unless the user opts in
with CREWAI_TELEMETRY=true. This service may run with no network, and should not phone home."""

import os

from settings import get_settings

if not get_settings().crewai_telemetry:
    for name, value in {
        "CREWAI_DISABLE_TELEMETRY": "true",
        "CREWAI_DISABLE_TRACKING": "true",
        "CREWAI_TRACING_ENABLED": "false",
        "OTEL_SDK_DISABLED": "true",
    }.items():
        os.environ.setdefault(name, value)
