"""Liveness and readiness as operators know them (Kubernetes' /livez and /readyz): the API serves
both beside /healthz, a worker on its METRICS_PORT. Liveness only says the process answers;
readiness asks every part the process needs (Runtime.readiness) and names the ones failing.
Both are open, like /healthz: what a part reports is redacted on the way out (a driver's message
may quote a URL with its password)."""

from __future__ import annotations

from typing import Any

from delivery.security.redaction import redacted_text

LIVE: dict[str, Any] = {"status": "ok"}


def readiness_answer(parts: dict[str, str | None]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a readiness probe: 200 when every part is fine, else 503 naming
    the failing parts and what to do about each."""
    parts = {name: None if problem is None else redacted_text(problem) for name, problem in parts.items()}
    failing = {name: problem for name, problem in parts.items() if problem is not None}
    checks = {name: problem or "ok" for name, problem in parts.items()}
    if failing:
        return 503, {"status": "not ready", "failing": sorted(failing), "checks": checks}
    return 200, {"status": "ready", "checks": checks}
