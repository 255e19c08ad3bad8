"""The thread executor starts waiting phases by priority, then in the order they arrived."""

from __future__ import annotations

import threading

from delivery.tasks.executors import ThreadExecutor
from delivery.tasks.records import Phase, TaskPriority

WAIT_S = 10


def test_waiting_phases_start_by_priority_then_arrival():
    started: list[str] = []
    all_started = threading.Event()
    first_started, release_first = threading.Event(), threading.Event()
    arrivals = [
        ("low-1", TaskPriority.low),
        ("normal-1", TaskPriority.normal),
        ("high-1", TaskPriority.high),
        ("low-2", TaskPriority.low),
        ("high-2", TaskPriority.high),
        ("normal-2", TaskPriority.normal),
    ]

    def run_phase(task_id: str, phase: Phase, attempt: int) -> None:
        started.append(task_id)
        if task_id == "first":  # holds the only thread until every other phase is waiting
            first_started.set()
            assert release_first.wait(WAIT_S)
        if len(started) == len(arrivals) + 1:
            all_started.set()

    executor = ThreadExecutor(1, run_phase)
    try:
        executor.dispatch("first", Phase.analysis, 1, TaskPriority.low)
        assert first_started.wait(WAIT_S)
        for task_id, priority in arrivals:
            executor.dispatch(task_id, Phase.analysis, 1, priority)
        release_first.set()
        assert all_started.wait(WAIT_S)
    finally:
        executor.shutdown()
    assert started == ["first", "high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]


def test_each_phase_runs_with_its_own_phase_and_attempt():
    seen: list[tuple[str, Phase, int]] = []
    done = threading.Event()

    def run_phase(task_id: str, phase: Phase, attempt: int) -> None:
        seen.append((task_id, phase, attempt))
        if len(seen) == 2:
            done.set()

    executor = ThreadExecutor(2, run_phase)
    try:
        executor.dispatch("a", Phase.delivery, 3, TaskPriority.normal)
        executor.dispatch("b", Phase.analysis, 1, TaskPriority.high)
        assert done.wait(WAIT_S)
    finally:
        executor.shutdown()
    assert sorted(seen) == [("a", Phase.delivery, 3), ("b", Phase.analysis, 1)]
