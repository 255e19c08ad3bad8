"""A scrape's figure from the database: answered within its cap, one query at a time, never retried."""

from __future__ import annotations

import threading
import time

from delivery.observability.metrics import CappedQuery


def test_a_query_that_hangs_is_unavailable_after_the_cap_and_is_not_started_twice() -> None:
    release, calls = threading.Event(), []

    def hanging() -> float:
        calls.append(1)
        release.wait(10)
        return 7

    query = CappedQuery("hanging", hanging, cap_s=0.2)
    try:
        started = time.monotonic()
        assert query.value() is None and query.value() is None
        assert time.monotonic() - started < 1.0 and len(calls) == 1  # the second scrape waited on the first query
        release.set()
        time.sleep(0.05)
        assert query.value() == 7 and query.value() == 7 and len(calls) == 3  # then a fresh query per scrape
    finally:
        release.set()
        query.close()


def test_a_query_that_fails_is_unavailable_at_once_and_asked_again_next_time() -> None:
    calls = []

    def failing() -> float:
        calls.append(1)
        raise ConnectionError("the database is down")

    query = CappedQuery("failing", failing, cap_s=5)
    started = time.monotonic()
    assert query.value() is None and query.value() is None
    assert time.monotonic() - started < 1.0 and len(calls) == 2
    query.close()
