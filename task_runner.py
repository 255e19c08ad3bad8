"""Accepts tasks and runs their crews in a bounded thread pool, bracketing each run with exactly
one `start` and exactly one terminal event (`end` or `error`)."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agents_config import detect_language
from crew_factory import SYSTEM_AGENT, CrewEventsHandler, LLMFactory, run_crew
from models import EventType, TaskStatus
from stream_manager import StreamManager
from task_store import TaskRecord, TaskStore

log = logging.getLogger(__name__)


def describe_failure(exc: BaseException, model: str) -> str:
    """A message for the `error` event: what went wrong and what the operator can do."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain}
    detail = str(chain[-1]) or type(chain[-1]).__name__
    if names & {"AuthenticationError", "PermissionDeniedError"}:
        hint = "The model provider rejected the API key: check DASHSCOPE_API_KEY or OPENAI_API_KEY."
    elif names & {"APIConnectionError", "ConnectError", "ConnectionRefusedError", "ConnectionError"}:
        hint = ("Could not connect to the model endpoint: check OPENAI_BASE_URL and that the server "
                "is running, or unset the API key to use the bundled local model.")
    elif names & {"APITimeoutError", "TimeoutError", "ReadTimeout"}:
        hint = "The model did not answer in time: raise LLM_TIMEOUT_S or try again."
    elif names & {"NotFoundError"}:
        hint = "The endpoint does not know this model: check LLM_MODEL."
    elif names & {"ProviderConfigError"}:
        hint = "The LLM provider is not configured."
    else:
        hint = "The crew failed unexpectedly; the server log has the traceback."
    return f"{hint} (model {model}: {type(chain[-1]).__name__}: {detail[:500]})"


class TaskRunner:
    def __init__(self, store: TaskStore, streams: StreamManager, llm_factory: LLMFactory,
                 model_label: str, max_workers: int,
                 handler_class: type[CrewEventsHandler] = CrewEventsHandler) -> None:
        self._store = store
        self._streams = streams
        self._llm_factory = llm_factory
        self._model_label = model_label
        self._handler_class = handler_class
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="crew")

    def submit(self, requirement: str, skip_confirmation: bool) -> TaskRecord:
        record = TaskRecord(task_id=str(uuid.uuid4()), requirement=requirement,
                            skip_confirmation=skip_confirmation, language=detect_language(requirement))
        self._streams.open(record.task_id)
        self._store.add(record)
        self._pool.submit(self._run, record)
        return record

    def _publish(self, record: TaskRecord):
        def publish(agent: str, event_type: str, content: str, metadata: dict[str, Any] | None) -> None:
            self._streams.publish(record.task_id, agent, event_type, content, metadata)
        return publish

    def _run(self, record: TaskRecord) -> None:
        publish = self._publish(record)
        record.status = TaskStatus.running
        record.started_at = time.time()
        publish(SYSTEM_AGENT, EventType.start.value, f"Task started with {self._model_label}",
                {"model": self._model_label, "language": record.language,
                 "total_steps": record.total_steps})
        try:
            run_crew(record, self._handler_class(record, publish), self._llm_factory)
        except BaseException as exc:  # noqa: BLE001 - any failure must end the stream
            log.exception("task %s failed", record.task_id)
            record.error = describe_failure(exc, self._model_label)
            record.status = TaskStatus.failed
            record.finished_at = time.time()
            publish(record.current_agent or SYSTEM_AGENT, EventType.error.value, record.error, None)
            return
        record.current_agent = None
        record.status = TaskStatus.succeeded
        record.finished_at = time.time()
        publish(SYSTEM_AGENT, EventType.end.value, "Delivery package complete",
                {"deliverables": sorted(record.deliverables)})

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
