"""Chaos: the only server process is killed (`kill -9`) at random moments, over and over, while
tasks run, wait for confirmation and are revised. Every task still ends `end` with four
deliverables and a gap-free log, and no agent's work is done twice except the one interrupted.

The moments are random on every run; the seed is printed so a failing run can be replayed with
CHAOS_SEED=<seed>."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from tests.support.chaos import answer_confirmations, finished_logs, resumes, submit_all
from tests.support.server_process import Server

KILLS = 6


def test_tasks_finish_through_random_kills_of_the_server(start_server: Callable[..., Server], tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 10**6))
    print(f"CHAOS_SEED={seed}")
    rng = random.Random(seed)
    settings = {"data_dir": str(tmp_path / "data"), "scripted_token_delay_ms": 2, "max_phase_attempts": 10}
    server = start_server(**settings)
    tasks = submit_all(server.url)
    for _ in range(KILLS):
        answer_confirmations(server, tasks, until=time.monotonic() + rng.uniform(0.2, 2.5))
        server.kill()
        server = start_server(port=server.port, **settings)
    answer_confirmations(server, tasks, until=time.monotonic() + 180, stop_when_done=True)

    logs = finished_logs(server.url, tasks, seed)
    assert resumes(logs) >= 1, f"no kill hit a running task (seed {seed}): the test proved nothing"
