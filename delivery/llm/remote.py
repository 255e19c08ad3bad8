"""Any OpenAI-compatible endpoint (DashScope's included), through CrewAI's own client."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import PrivateAttr
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from delivery.crew.compat import FINAL_ANSWER_PREFIX, ModelCallRetrying, OpenAICompletionWithForm, publish_to_stream
from delivery.documents import forms
from delivery.documents.structure import CUT_OFF_NOTE
from delivery.observability.metrics import LLM_CALL_ERRORS
from delivery.security.redaction import redacted_url

log = logging.getLogger(__name__)

# (base URL, model) of servers that refused a JSON-schema response format: asked once per process.
_WITHOUT_FORMS: set[tuple[str | None, str]] = set()

_TRANSIENT = {
    "APIConnectionError",
    "APITimeoutError",
    "RateLimitError",
    "InternalServerError",
    "ConnectError",
    "ReadTimeout",
    "TimeoutError",
    "ServiceUnavailableError",
    # the connection broke while the answer streamed in
    "RemoteProtocolError",
    "ReadError",
}


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the network, a timeout, 429 or a 5xx. Not a bad key, model or request,
    nor a refused response format (some servers refuse it with a 500: it fails the same way again)."""
    status = getattr(exc, "status_code", None)
    return (
        isinstance(exc, Exception)
        and (type(exc).__name__ in _TRANSIENT or (isinstance(status, int) and (status == 429 or status >= 500)))
        and not rejects_form(exc)
    )


# What servers say when they refuse the JSON-schema format, whatever their status: OpenAI 400
# ("'response_format' of type 'json_schema' is not supported"), a FastAPI-based server 422 (its
# request model's validation error, naming `response_format`), llama-cpp-python's server 500 (the
# same validation error, wrapped).
_FORM_WORDS = ("response_format", "response format", "json_schema", "json schema", "structured output")


def rejects_form(exc: BaseException) -> bool:
    """An error answer about the response format, on any status: the server (or model) does not
    do structured output. Recognised by what the server says: statuses differ between servers."""
    if not isinstance(getattr(exc, "status_code", None), int):
        return False  # not an answer from the server (a connection or timeout error)
    text = str(exc).lower()
    return any(word in text for word in _FORM_WORDS)


class RetryingOpenAICompletion(OpenAICompletionWithForm):
    """Transient failures retried with exponential backoff (LLM_MAX_RETRIES, LLM_RETRY_BASE_S)
    before the task fails; the SDK's own retries are off, so the setting is the whole story.

    With `document_form` set (STRUCTURED_OUTPUT), the model is asked for the document's JSON form
    (documents/forms.py) and the answer is rendered as the document's
    Markdown. A server that refuses the format is remembered and asked for Markdown from then on;
    one that ignores it returns Markdown anyway, which then is the document as written."""

    retry_attempts: int = 4
    retry_base_s: float = 1.0
    deliverable: str | None = None
    document_language: str = "en"
    # Why the last streamed answer ended ("stop", "length", ...), as the server said.
    _finish_reason: str | None = PrivateAttr(default=None)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        server = (self.base_url, self.model)
        if self.document_form is not None and server in _WITHOUT_FORMS:
            self.document_form = None
        self._finish_reason = None
        try:
            answer = self._call_retrying(*args, **kwargs)
        except Exception as exc:
            if self.document_form is None or not rejects_form(exc):
                raise
            _WITHOUT_FORMS.add(server)
            log.warning(
                "%s at %s refused a JSON-schema response format (%s); asking for Markdown from now on",
                self.model,
                redacted_url(self.base_url) if self.base_url else "api.openai.com",
                _server_said(exc),
            )
            self.document_form = None
            answer = self._call_retrying(*args, **kwargs)
        if not isinstance(answer, str):
            return answer
        if self.document_form is not None and self.deliverable:
            document = forms.render(self.deliverable, answer, self.document_language)
            if document is not None:
                answer = FINAL_ANSWER_PREFIX + document
        if self._finish_reason == "length":
            # Cut off mid-document: not accepted as complete. The note makes it a gap the check
            # reports (a `check` event viewers see) and the fix loop asks the agent to fix.
            log.warning(
                "%s stopped at the output cap of %s tokens (LLM_MAX_TOKENS) before its answer ended%s",
                self.model,
                self.max_tokens,
                f" ({self.deliverable})" if self.deliverable else "",
            )
            answer = answer.rstrip() + "\n\n" + CUT_OFF_NOTE.format(cap=self.max_tokens)
        return answer

    def _finalize_streaming_response(self, *args: Any, **kwargs: Any) -> Any:
        # CrewAI's (private) last step of a streamed answer, the one place that sees its finish reason.
        self._finish_reason = kwargs.get("finish_reason")
        return super()._finalize_streaming_response(*args, **kwargs)

    def _call_retrying(self, *args: Any, **kwargs: Any) -> Any:
        """Each attempt is a model call of its own: CrewAI emits its started, chunk and
        completed-or-failed events, so the usage meter counts every attempt, and viewers get a
        `model_retry` event between two attempts, then the next attempt's text from its start.
        An attempt's text is never spliced onto another's: a model may answer differently."""
        retrying = Retrying(
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential(multiplier=self.retry_base_s, max=30),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: _log_retry(state, self.model, self.retry_attempts),
        )
        one_call = super().call

        def attempt(*args: Any, **kwargs: Any) -> Any:
            try:
                return one_call(*args, **kwargs)
            except json.JSONDecodeError as exc:  # the SDK reads each streamed chunk as JSON
                raise MalformedStreamError(f"a streamed chunk is not JSON ({exc})") from exc

        try:
            return retrying(attempt, *args, **kwargs)
        except Exception as exc:
            LLM_CALL_ERRORS.labels(self.model, type(exc).__name__).inc()  # the last attempt's failure
            exc.attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise


class MalformedStreamError(Exception):
    """The server's streamed answer is not OpenAI-compatible (a chunk that is not JSON): not
    retried: a server that sends one most likely will again. describe_failure says what to check."""


def _log_retry(state: RetryCallState, model: str, max_attempts: int) -> None:
    """Between two attempts (tenacity's before_sleep, on the calling thread): count and log the
    failure, and tell the task's viewers (a `model_retry` event) before the next attempt streams."""
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    if exc is not None:
        LLM_CALL_ERRORS.labels(model, type(exc).__name__).inc()
    log.warning("model call failed (%s); retry %d in %.1f s", exc or "?", state.attempt_number, delay)
    error = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown"
    publish_to_stream(
        None,
        ModelCallRetrying(
            model=model,
            attempt=state.attempt_number + 1,
            max_attempts=max_attempts,
            delay_s=round(delay, 3),
            error=error[:300],
        ),
    )


def _server_said(exc: BaseException, limit: int = 300) -> str:
    """What the server said, on one line, for a log: its error message when it sent one (some
    refusals go on for lines: a validation error with a traceback), else the error itself."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    status = getattr(exc, "status_code", None)
    text = " ".join(str(message if message else exc).split())
    text = text if len(text) <= limit else text[:limit] + "…"
    return f"{status}: {text}" if message and status else text
