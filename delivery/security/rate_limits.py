"""Request-rate limits per client address and per API key, on the `limits` library.

Counters live in this process, or in Redis when EVENT_BACKEND=redis so that every replica
counts against the same limit. Checking them is blocking in that case: call from a thread.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from delivery.errors import RateLimitedError
from delivery.settings import EventBackendKind, Settings

log = logging.getLogger(__name__)
# A Redis that does not answer costs a request at most this long; then the request goes on unlimited.
REDIS_TIMEOUT_S = 1.0
UNLIMITED_LOG_EVERY_S = 60.0


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        if settings.event_backend is EventBackendKind.redis:
            storage = storage_from_string(
                settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            )
        else:
            storage = storage_from_string("memory://")
        self._limiter = MovingWindowRateLimiter(storage)
        self._general = _parse("RATE_LIMIT", settings.rate_limit)
        self._run_task = _parse("RATE_LIMIT_RUN_TASK", settings.rate_limit_run_task)
        self._unlimited_logged_at = -math.inf

    def hit_address(self, address: str) -> None:
        """Count one request from this client address against RATE_LIMIT."""
        self._hit(self._general, "RATE_LIMIT", f"ip:{address}", "client address")

    def hit_caller(self, caller: str, per: str) -> None:
        """Count one request of this authenticated caller (`per`: "API key", "stream token")
        against RATE_LIMIT."""
        self._hit(self._general, "RATE_LIMIT", caller, per)

    def hit_new_task(self, caller: str) -> None:
        """Count one new task of this caller (an API key, or `ip:<address>`) against RATE_LIMIT_RUN_TASK."""
        self._hit(self._run_task, "RATE_LIMIT_RUN_TASK", caller, "client")

    def _hit(self, item: RateLimitItem, name: str, who: str, per: str) -> None:
        try:
            if self._limiter.hit(item, who):
                return
            reset = self._limiter.get_window_stats(item, who).reset_time
        except Exception as exc:  # noqa: BLE001 - the counters' store failing must not fail the request
            # The limits protect the service; they are not its work. While their Redis is away the
            # request goes on (its own work answers 503 if it needs Redis too), said once a minute.
            now = time.monotonic()
            if now - self._unlimited_logged_at > UNLIMITED_LOG_EVERY_S:
                self._unlimited_logged_at = now
                log.warning("rate limits are not enforced: their counters cannot be reached (%s); check REDIS_URL", exc)
            return
        wait = max(1, math.ceil(reset - time.time()))
        raise RateLimitedError(f"Too many requests: the limit is {item} per {per} ({name}). Retry in {wait} s.", wait)


def _parse(name: str, value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a rate such as '20/minute' or '5 per second'") from None
