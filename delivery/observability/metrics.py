"""Prometheus metrics: GET /metrics on API processes, METRICS_PORT on Celery workers.

The event path stays lean: nothing is counted per event with a prometheus-client call (a locked
increment costs about as much as a publish). Events published and sent are plain integers the
backends and SSE responses keep anyway, read at scrape time by `RuntimeCollector`, like the
gauges (queued tasks, open streams, viewers). Per-call and per-request figures (model calls,
tasks, HTTP requests, one latency sample per SSE write) use prometheus-client directly.

A scrape never waits on the database for long: the one figure read from it (queued tasks) is
queried on a thread of its own, without the store's retries, and waited for at most
QUERY_CAP_S; past that, or when the query fails, the gauge reads NaN and the rest is answered.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.errors import DomainError
from delivery.observability import health
from delivery.security.gate import REFUSAL_STATUS, Gate, refusal_headers
from delivery.tasks.records import TaskStatus

if TYPE_CHECKING:
    from delivery.runtime import Runtime
    from delivery.tasks.store import TaskStore

log = logging.getLogger(__name__)
# How long a scrape waits for a figure from the database before it shows that figure as NaN.
QUERY_CAP_S = 1.0
UNAVAILABLE_LOG_EVERY_S = 60.0

_LONG = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
TASKS_STARTED = Counter("delivery_tasks_started", "Tasks that began running (their start event)")
TASKS_FINISHED = Counter("delivery_tasks_finished", "Tasks that ended, by final status", ["status"])
TASK_RUNNING_SECONDS = Histogram(
    "delivery_task_running_seconds", "Running time of ended tasks (waiting for confirmation excluded)", buckets=_LONG
)
PHASE_SECONDS = Histogram(
    "delivery_phase_duration_seconds", "Duration of one phase in this process", ["phase"], buckets=_LONG
)
LLM_TOKENS = Counter("delivery_llm_tokens", "Tokens used by model calls", ["model", "agent", "kind"])
LLM_COST = Counter(
    "delivery_llm_cost", "Cost of model calls (models with a known price)", ["model", "agent", "currency"]
)
LLM_CALL_SECONDS = Histogram(
    "delivery_llm_call_duration_seconds",
    "Duration of one model call",
    ["model"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
BACKGROUND_ERRORS = Counter(
    "delivery_background_errors",
    "Items a background loop set aside, or passes of it that failed, by loop (the log says which task)",
    ["loop"],
)
LLM_CALL_ERRORS = Counter("delivery_llm_call_errors", "Failed model call attempts, by exception", ["model", "error"])
EVENT_DELIVERY_SECONDS = Histogram(
    "delivery_event_delivery_seconds",
    "Publish-to-send latency, one sample per SSE write (its oldest event)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_REQUESTS = Counter(
    "delivery_http_requests", "HTTP requests answered, by route and status", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "delivery_http_request_duration_seconds",
    "Time to answer (streams: to their first byte)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class _PlainCounter:
    """An integer only ever changed from one thread (here: the event loop's), read at scrape."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


EVENTS_SENT = _PlainCounter()  # SSE responses add each write's event count


def observe_llm_call(call: dict[str, Any]) -> None:
    """One recorded model call (the usage meter tells)."""
    model, agent = call["model"], call["agent"]
    LLM_TOKENS.labels(model, agent, "prompt").inc(call["prompt_tokens"])
    LLM_TOKENS.labels(model, agent, "completion").inc(call["completion_tokens"])
    if call["cost"] is not None:
        LLM_COST.labels(model, agent, call["currency"]).inc(call["cost"])
    LLM_CALL_SECONDS.labels(model).observe(call["duration_s"])


def observe_ending(status: TaskStatus, run_seconds: float) -> None:
    TASKS_FINISHED.labels(status.value).inc()
    TASK_RUNNING_SECONDS.observe(run_seconds)


class CappedQuery:
    """A figure read from the database for a scrape, waited for at most `cap_s` (None after that,
    or when the query fails). One query at a time, on a thread of its own: a scrape that comes
    while an earlier one still waits for the database shares its answer instead of adding a thread."""

    def __init__(self, name: str, query: Callable[[], float], cap_s: float = QUERY_CAP_S) -> None:
        self._name, self._query, self._cap_s = name, query, cap_s
        self._lock = threading.Lock()
        self._pending: Future[float] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"metrics-{name}")
        self._complained_at = -math.inf

    def value(self) -> float | None:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._thread.submit(self._query)
            pending = self._pending
        try:
            return float(pending.result(timeout=self._cap_s))
        except FutureTimeoutError:
            problem = f"no answer within {self._cap_s:g} s"
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the figure is unavailable
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        now = time.monotonic()
        if now - self._complained_at > UNAVAILABLE_LOG_EVERY_S:
            self._complained_at = now
            log.warning("metrics: %s is unavailable (%s); it reads NaN until the database answers", self._name, problem)
        return None

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _count_without_retries(store: TaskStore, status: TaskStatus) -> int:
    """The store's count, not the wrapper that waits out a database restart (store.py retries
    every call for up to 30 s): a scrape wants the figure now or not at all."""
    count = type(store).count
    plain: Callable[[TaskStore, TaskStatus], int] = getattr(count, "__wrapped__", count)
    return plain(store, status)


class RuntimeCollector(Collector):
    """What is read from the process's state at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.queued = CappedQuery(
            "delivery_tasks_queued", lambda: _count_without_retries(runtime.store, TaskStatus.queued)
        )

    def collect(self) -> Iterator[Any]:
        runtime = self._runtime
        snapshots = runtime.streams.snapshots()
        queued = self.queued.value()
        yield GaugeMetricFamily(
            "delivery_tasks_queued",
            "Tasks waiting to start (all processes); NaN when the database did not answer in time",
            value=math.nan if queued is None else queued,
        )
        yield GaugeMetricFamily(
            "delivery_tasks_held", "Tasks with a phase queued or running in this process", value=len(runtime.runs.all())
        )
        yield GaugeMetricFamily(
            "delivery_busy_workers", "Executor threads running a phase in this process", value=runtime.phases.busy
        )
        yield GaugeMetricFamily(
            "delivery_streams_open",
            "Running tasks' streams held in this process",
            value=sum(not s.closed for s in snapshots),
        )
        yield GaugeMetricFamily(
            "delivery_streams_ended",
            "Ended streams still held in memory for replay",
            value=sum(s.closed for s in snapshots),
        )
        yield GaugeMetricFamily(
            "delivery_viewers", "SSE viewers connected to this process", value=sum(s.subscribers for s in snapshots)
        )
        yield CounterMetricFamily(
            "delivery_events_published",
            "Events this process appended to task logs",
            value=runtime.streams.published_count(),
        )
        yield CounterMetricFamily(
            "delivery_events_sent", "Events this process wrote to SSE viewers", value=EVENTS_SENT.value
        )


def render() -> bytes:
    """The metrics in Prometheus's text format (CONTENT_TYPE_LATEST). Blocking, up to QUERY_CAP_S:
    call it off the event loop."""
    return generate_latest(REGISTRY)


def register(runtime: Runtime) -> RuntimeCollector:
    collector = RuntimeCollector(runtime)
    REGISTRY.register(collector)
    return collector


def unregister(collector: RuntimeCollector) -> None:
    REGISTRY.unregister(collector)
    collector.queued.close()


class HttpMetrics:
    """ASGI middleware: requests by method, route template and status, and time to answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        async def watched_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                HTTP_REQUESTS.labels(scope["method"], template, str(message["status"])).inc()
                HTTP_SECONDS.labels(scope["method"], template).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, watched_send)


class MetricsServer:
    """A worker's metrics endpoint (it has no web server of its own): GET /metrics on
    METRICS_HOST:METRICS_PORT, behind the same gate as the API's (security/gate.py)."""

    def __init__(
        self, host: str, port: int, gate: Gate, readiness: Callable[[], dict[str, str | None]] | None = None
    ) -> None:
        """`readiness`: the process's parts and their problems, served at /readyz (with /livez)."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                extra: dict[str, str] = {}
                if path == "/livez":
                    status, body, content_type = 200, json.dumps(health.LIVE).encode(), "application/json"
                elif path == "/readyz" and readiness is not None:
                    status, answer = health.readiness_answer(readiness())
                    body, content_type = json.dumps(answer).encode(), "application/json"
                elif path == "/metrics":
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    try:
                        gate.admit(headers, self.client_address[0])
                    except DomainError as refused:
                        status, extra = REFUSAL_STATUS.get(type(refused), 400), refusal_headers(refused)
                        body, content_type = json.dumps({"detail": str(refused)}).encode(), "application/json"
                    else:
                        status, body, content_type = 200, render(), CONTENT_TYPE_LATEST
                else:
                    self.send_error(404, "Not Found: metrics are at /metrics, health at /livez and /readyz")
                    return
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
