"""GET /metrics on a real server: the figures agree with what the API reports, and with API keys
on the endpoint is not open to the world."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import AGENTS, run_task, wait_finished
from tests.support.sse_client import read_stream


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
