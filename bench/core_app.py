"""The service plus two benchmark-only routes that flood streams with synthetic tokens straight
from worker threads, bypassing CrewAI: they measure the streaming core alone. BENCH_NAIVE=1
builds it on the seed-design baseline instead."""

import os
import threading
import time
import uuid

from fastapi import Request

from delivery.events import EventType

if os.environ.get("BENCH_NAIVE") == "1":
    from bench.naive_app import app
else:
    from main import app

_prepared: dict[str, list[str]] = {}


@app.post("/bench/prepare")
def prepare(request: Request, tasks: int = 20) -> dict:
    streams = request.app.state.runtime.streams
    ids = [f"flood-{uuid.uuid4()}" for _ in range(tasks)]
    for task_id in ids:
        streams.open(task_id)
    batch = str(uuid.uuid4())
    _prepared[batch] = ids
    return {"batch": batch, "streams": ids}


@app.post("/bench/start")
def start(request: Request, batch: str, tokens: int = 2000, rate: float = 0) -> dict:
    """Each stream gets `tokens` events, as fast as possible (rate=0) or paced at `rate`/s."""
    publish = request.app.state.runtime.streams.publish

    def produce(task_id: str) -> None:
        t0 = time.perf_counter()
        for i in range(tokens):
            publish(task_id, "Bench", EventType.thought.value, "tok ", None)
            if rate and i % 10 == 9:
                delay = t0 + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        publish(task_id, "Bench", EventType.end.value, "done", None)

    for task_id in _prepared.pop(batch):
        threading.Thread(target=produce, args=(task_id,), daemon=True).start()
    return {"started": True}
