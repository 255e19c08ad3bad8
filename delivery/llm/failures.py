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
        {"InternalServerError", "ServiceUnavailableError"},
        "The model endpoint kept failing with server errors: check its status and try again later.",
    ),
    ({"NotFoundError"}, "The endpoint does not know this model: check LLM_MODEL."),
]


def describe_failure(exc: BaseException, model: str) -> str:
    """A message for the `error` event: what went wrong and what the operator can do."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    hint, cause = "The crew failed unexpectedly; the server log has the traceback.", chain[-1]
    for names, text in _HINTS:
        found = next((e for e in chain if type(e).__name__ in names), None)
        if found is not None:
            hint, cause = text, found
            break
    attempts = next((e.attempts for e in chain if hasattr(e, "attempts")), 1)
    if attempts > 1:
        hint += f" Tried {attempts} times with backoff (LLM_MAX_RETRIES={attempts - 1})."
    detail = str(cause) or type(cause).__name__
    return f"{hint} (model {model}: {type(cause).__name__}: {detail[:500]})"
