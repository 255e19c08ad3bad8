"""Domain errors raised by the core; main.py turns them into HTTP responses."""


def shown(value: str, limit: int = 40) -> str:
    """A client's value quoted in an error message: cut short, and ASCII so that any response
    (and any log) can carry it whatever it contained."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


class DomainError(Exception):
    """Base class: the message is written for the API caller and says what to do."""


class TaskNotFoundError(DomainError):
    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"No task with id {shown(task_id, 80)}. It may never have existed or may have expired; "
            "list current streams with GET /api/streams or start one with POST /api/run_task."
        )
        self.task_id = task_id


class TaskNotFinishedError(DomainError):
    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(
            f"Task {task_id} is {status}; its result is available once it has finished. "
            f"Follow GET /api/stream/{task_id} or poll GET /api/task/{task_id}/status."
        )


class StreamClosedError(DomainError):
    """Publishing after the terminal event: the log of a task is append-only and ends once."""


class InvalidResumePointError(DomainError):
    pass


class TaskStateConflictError(DomainError):
    """The request does not fit the task's current state (HTTP 409)."""


class RequestInProgressError(DomainError):
    """The same Idempotency-Key is still being worked on (HTTP 409, with Retry-After)."""

    retry_after_s = 2  # a request's work takes a second or two, or waits out a failing part


class ServiceUnavailableError(DomainError):
    """A part the request needs (Redis, the Celery broker) failed half-way and what was begun was
    undone (HTTP 503); `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidRequestError(DomainError):
    """Well-formed but unusable input (HTTP 422)."""


class DeliverableNotFoundError(DomainError):
    """No such deliverable, or not produced yet (HTTP 404)."""


class AuthenticationRequiredError(DomainError):
    """No credentials (HTTP 401)."""


class ForbiddenError(DomainError):
    """Credentials that do not allow this (HTTP 403)."""


class RateLimitedError(DomainError):
    """Too many requests (HTTP 429); `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
