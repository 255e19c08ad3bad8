"""Any OpenAI-compatible endpoint (DashScope's included), through CrewAI's own client."""

from __future__ import annotations

import logging
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from delivery.crew.compat import OpenAICompletion
from delivery.observability.metrics import LLM_CALL_ERRORS

log = logging.getLogger(__name__)

_TRANSIENT = {
    "APIConnectionError",
    "APITimeoutError",
    "RateLimitError",
    "InternalServerError",
    "ConnectError",
    "ReadTimeout",
    "TimeoutError",
    "ServiceUnavailableError",
}


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the network, a timeout, 429 or a 5xx. Not a bad key, model or request."""
    status = getattr(exc, "status_code", None)
    return isinstance(exc, Exception) and (
        type(exc).__name__ in _TRANSIENT or (isinstance(status, int) and (status == 429 or status >= 500))
    )


class RetryingOpenAICompletion(OpenAICompletion):
    """Transient failures retried with exponential backoff (LLM_MAX_RETRIES, LLM_RETRY_BASE_S)
    before the task fails; the SDK's own retries are off, so the setting is the whole story."""

    retry_attempts: int = 4
    retry_base_s: float = 1.0

    def call(self, *args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=self.retry_base_s, max=30),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: _log_retry(state, self.model),
        )
        try:
            return retrying(super().call, *args, **kwargs)
        except Exception as exc:
            LLM_CALL_ERRORS.labels(self.model, type(exc).__name__).inc()  # the last attempt's failure
            exc.attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise


def _log_retry(state: RetryCallState, model: str) -> None:
    exc = state.outcome.exception() if state.outcome else None
    if exc is not None:
        LLM_CALL_ERRORS.labels(model, type(exc).__name__).inc()
    log.warning(
        "model call failed (%s); retry %d in %.1f s",
        state.outcome.exception() if state.outcome else "?",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0,
    )
