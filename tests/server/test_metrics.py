"""GET /metrics on a real server: the figures agree with what the API reports, and with API keys
on the endpoint is not open to the world."""

from __future__ import annotations

import itertools
import math
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import AGENTS, run_task, wait_finished, wait_status
from tests.support.real_services import PG_PORT, fresh_postgres_database
from tests.support.sse_client import read_stream
from tests.support.tcp_proxy import CuttableProxy
from tests.support.waiting import wait_for


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_tasks_tokens_events_and_requests(start_server):
    server = start_server(llm_prices='{"scripted-test-double": {"input": 1, "output": 4, "currency": "USD"}}')
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_ids = [run_task(c, f"Build app {n} with a dashboard") for n in range(2)]
        statuses = [wait_finished(c, t) for t in task_ids]
        logs = [read_stream(server.url, t).events for t in task_ids]
        samples = scrape(server.url)
    assert value(samples, "delivery_tasks_started_total") == 2
    assert value(samples, "delivery_tasks_finished_total", status="succeeded") == 2
    assert value(samples, "delivery_task_running_seconds_count") == 2
    assert value(samples, "delivery_phase_duration_seconds_count", phase="analysis") == 2
    assert value(samples, "delivery_events_published_total") == sum(len(log) for log in logs)
    # Each log was read once above; the SSE writes counted every event sent.
    assert value(samples, "delivery_events_sent_total") == sum(len(log) for log in logs)
    assert value(samples, "delivery_event_delivery_seconds_count") >= 2
    for agent in AGENTS:
        prompt = sum(s["usage"]["agents"][agent]["prompt_tokens"] for s in statuses)
        completion = sum(s["usage"]["agents"][agent]["completion_tokens"] for s in statuses)
        assert (
            value(samples, "delivery_llm_tokens_total", model="scripted-test-double", agent=agent, kind="prompt")
            == prompt
        )
        assert (
            value(samples, "delivery_llm_tokens_total", model="scripted-test-double", agent=agent, kind="completion")
            == completion
        )
        assert (
            abs(
                value(samples, "delivery_llm_cost_total", model="scripted-test-double", agent=agent, currency="USD")
                - (prompt + 4 * completion) / 1e6
            )
            < 1e-9
        )
    assert value(samples, "delivery_llm_call_duration_seconds_count", model="scripted-test-double") == 8
    assert value(samples, "delivery_http_requests_total", method="POST", route="/api/run_task", status="202") == 2
    assert (
        value(samples, "delivery_http_requests_total", method="GET", route="/api/task/{task_id}/status", status="200")
        >= 2
    )
    assert value(samples, "delivery_tasks_queued") == 0 and value(samples, "delivery_streams_ended") == 2
    assert value(samples, "delivery_viewers") == 0


def test_viewers_and_open_streams_are_gauges_of_now(slow_server):
    import threading

    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c, "Build a long report generator")
        readers = [threading.Thread(target=read_stream, args=(slow_server.url, task_id)) for _ in range(3)]
        for reader in readers:
            reader.start()
        from tests.support.api import subscribers
        from tests.support.waiting import wait_for

        wait_for(lambda: subscribers(c, task_id) == 3, message="three viewers")
        samples = scrape(slow_server.url)
        assert value(samples, "delivery_viewers") >= 3 and value(samples, "delivery_streams_open") >= 1
        assert value(samples, "delivery_busy_workers") >= 1
        for reader in readers:
            reader.join(60)


def test_with_api_keys_metrics_need_a_key(start_server):
    server = start_server(api_keys="metrics-key-1")
    assert httpx.get(server.url + "/metrics").status_code == 401
    wrong = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "API_KEYS" in wrong.json()["detail"]
    samples = scrape(server.url, Authorization="Bearer metrics-key-1")
    assert ("delivery_tasks_started_total", frozenset()) in samples


class LineClock:
    """Reads a task's stream on a thread and notes when each line (event field or `: ping`) arrived."""

    def __init__(self, url: str, task_id: str) -> None:
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, task_id), daemon=True)
        self._thread.start()

    def _read(self, url: str, task_id: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c, c.stream("GET", f"/api/stream/{task_id}") as r:
            for _ in r.iter_lines():
                self.arrivals.append(time.monotonic())
                if self._stop.is_set():
                    return

    def longest_silence(self, since: float, until: float) -> float:
        times = [since, *(t for t in self.arrivals if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(times))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.system
def test_with_the_database_down_metrics_answer_at_once_and_streams_keep_flowing(start_server):
    """The one figure /metrics reads from the database is read off the event loop, without the
    store's 30-s retries and waited for at most about a second: the scrape answers (that gauge
    NaN) and an open stream keeps getting its heartbeats meanwhile."""
    with fresh_postgres_database() as url:
        proxy = CuttableProxy(PG_PORT)
        try:
            server = start_server(database_url=url.replace(f":{PG_PORT}/", f":{proxy.port}/"), sse_heartbeat_s=0.2)
            with httpx.Client(base_url=server.url, timeout=30) as c:
                task_id = run_task(c, "Build a greenhouse monitor", skip_confirmation=False)
                wait_status(c, task_id, "awaiting_confirmation")  # its stream stays open, with heartbeats
            clock = LineClock(server.url, task_id)
            wait_for(lambda: len(clock.arrivals) >= 10, 10, message="the stream's first events and heartbeats")
            assert value(scrape(server.url), "delivery_tasks_queued") == 0

            proxy.down()
            started = time.monotonic()
            r = httpx.get(server.url + "/metrics", timeout=40)
            took = time.monotonic() - started
            assert r.status_code == 200 and took < 2.5, f"{r.status_code} after {took:.1f} s"
            samples = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
            assert math.isnan(samples["delivery_tasks_queued"]) and samples["delivery_viewers"] == 1
            time.sleep(0.5)
            assert clock.longest_silence(started - 0.2, time.monotonic()) < 1.5  # heartbeats every 0.2 s

            proxy.up()

            def counted_again() -> bool:
                return value(scrape(server.url), "delivery_tasks_queued") == 0

            wait_for(counted_again, 20, interval=0.5, message="the queued-tasks gauge once the database is back")
            clock.stop()
            server.stop()  # before its database is dropped
        finally:
            proxy.close()
