"""Waiting for a condition, always with a deadline: a regression fails the test, never hangs it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll `condition` until it returns something truthy, and return that; AssertionError after
    `timeout` seconds naming `message` (a string, or a callable for the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)
