"""What the `error` event of a failed crew says: the cause, and what the operator can do."""

from __future__ import annotations

_HINTS = [  # (exception names, what to tell the operator), first match wins
    (
        {"AuthenticationError", "PermissionDeniedError"},
        "The model provider rejected the API key: check DASHSCOPE_API_KEY or OPENAI_API_KEY.",
    ),
    (
        {"APIConnectionError", "ConnectError", "ConnectionRefusedError", "ConnectionError"},
        "Could not connect to the model endpoint: check OPENAI_BASE_URL and that the server is running, "
        "or unset the API key to use the bundled local model.",
    ),
    (
        {"APITimeoutError", "TimeoutError", "ReadTimeout"},
        "The model did not answer in time: raise LLM_TIMEOUT_S or try again.",
    ),
    ({"RateLimitError"}, "The model provider is rate-limiting this key: wait, or raise your quota."),
    (
        {"RemoteProtocolError", "ReadError"},
        "The model endpoint kept breaking off its answers mid-stream: check the server and anything in "
        "between (a proxy, a load balancer), then try again.",
    ),
    (
        {"InternalServerError", "ServiceUnavailableError"},
        "The model endpoint kept failing with server errors: check its status and try again later.",
    ),
    ({"NotFoundError"}, "The endpoint does not know this model: check LLM_MODEL."),
    (
        {"MalformedStreamError"},
        "The model endpoint streamed something that is not an OpenAI-compatible answer: check that "
        "OPENAI_BASE_URL points at an OpenAI-compatible server, and that nothing in between (a proxy) "
        "alters its event stream.",
    ),
]
# Failures known by what they say, not by their type (first match wins, after the types above).
_MESSAGE_HINTS = [
    (
        "Invalid response from LLM call - None or empty",  # CrewAI's, when a call returns no text
        "The model answered with no text at all: check that LLM_MODEL names a chat model the endpoint "
        "serves, then try again.",
    ),
]


def describe_failure(exc: BaseException, model: str) -> str:
    """A message for the `error` event: what went wrong and what the operator can do."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    hint, cause = "The crew failed unexpectedly; the server log has the traceback.", _first_cause(exc)
    for names, text in _HINTS:
        found = next((e for e in chain if type(e).__name__ in names), None)
        if found is not None:
            hint, cause = text, found
            break
    else:
        for fragment, text in _MESSAGE_HINTS:
            found = next((e for e in chain if fragment in str(e)), None)
            if found is not None:
                hint, cause = text, found
                break
    attempts = next((e.attempts for e in chain if hasattr(e, "attempts")), 1)
    if attempts > 1:
        hint += f" Tried {attempts} times with backoff (LLM_MAX_RETRIES={attempts - 1})."
    detail = str(cause) or type(cause).__name__
    return f"{hint} (model {model}: {type(cause).__name__}: {detail[:500]})"


def _first_cause(exc: BaseException) -> BaseException:
    """The end of the chain of explicit causes (`raise ... from`). Not the implicit context: an
    exception raised while another was handled need not come from it (CrewAI runs a crew's flow
    inside `except RuntimeError`, so every failure would read "no running event loop")."""
    seen = [exc]
    while exc.__cause__ is not None and exc.__cause__ not in seen:
        exc = exc.__cause__
        seen.append(exc)
    return exc
