"""The priority queue with the thread executor: when every crew slot is taken, queued tasks start
by priority (high, normal, low), then in the order they arrived."""

from __future__ import annotations

import httpx
import pytest

from tests.support.priority import EXPECTED_START_ORDER, start_order_of_queued_tasks


@pytest.fixture(scope="module")
def one_slot(start_server):
    # One crew at a time, tokens slow enough that the queue fills behind the first task.
    return start_server(max_concurrent_tasks=1, scripted_token_delay_ms=3)


def test_queued_tasks_start_by_priority_then_arrival(one_slot):
    with httpx.Client(base_url=one_slot.url, timeout=30) as c:
        assert start_order_of_queued_tasks(c) == EXPECTED_START_ORDER


def test_an_unknown_priority_is_refused_with_the_allowed_values(server):
    r = httpx.post(server.url + "/api/run_task", json={"user_requirement": "A wiki", "priority": "urgent"}, timeout=10)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "priority"]]
    assert "'low', 'normal' or 'high'" in detail[0]["msg"]
