"""Request-rate limits per API key (or client address), on the `limits` library.

Counters live in this process, or in Redis when EVENT_BACKEND=redis so that every replica
counts against the same limit.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from delivery.errors import RateLimitedError
from delivery.settings import EventBackendKind, Settings


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        shared = settings.event_backend is EventBackendKind.redis
        self._limiter = MovingWindowRateLimiter(storage_from_string(settings.redis_url if shared else "memory://"))
        self._general = _parse("RATE_LIMIT", settings.rate_limit)
        self._run_task = _parse("RATE_LIMIT_RUN_TASK", settings.rate_limit_run_task)

    def hit(self, who: str, run_task: bool = False) -> None:
        """Count one request of `who`; RateLimitedError once a limit is used up. Blocking when the
        counters are in Redis: call from a worker thread."""
        for item, name in ((self._general, "RATE_LIMIT"), (self._run_task, "RATE_LIMIT_RUN_TASK")):
            if item is self._run_task and not run_task:
                continue
            if not self._limiter.hit(item, who):
                reset = self._limiter.get_window_stats(item, who).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise RateLimitedError(
                    f"Too many requests: the limit is {item} per client ({name}). Retry in {wait} s.", wait
                )


def _parse(name: str, value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a rate such as '20/minute' or '5 per second'") from None
