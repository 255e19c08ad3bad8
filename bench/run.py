"""`make bench`: every figure for our service and, in the same run, for the seed-design baseline.

Writes docs/benchmarks.json and docs/benchmarks.png and prints a table with ratios.
BENCH_QUICK=1 uses smaller sizes (a smoke run, not for quoting).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.naive_backend import NaiveEventBackend
from bench.sse_load import Subscriber, hold_idle, subscribe
from bench.stream_memory import stream_memory
from bench.topology import deployment
from delivery.streaming.memory import MemoryEventBackend
from stream_manager import StreamManager
from tests.support.nginx_process import Nginx
from tests.support.real_services import ensure_redis
from tests.support.server_process import Server

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
os.environ.setdefault("LLM_PROVIDER", "scripted")

QUICK = os.environ.get("BENCH_QUICK") == "1"
TASKS, SUBS = 20, 3
ROUNDS = 1 if QUICK else 3
IDLE_N = 1000 if QUICK else 10_000
TTFE_N = 10 if QUICK else 40
PUBLISH_N = 20_000 if QUICK else 200_000
TMP = Path(tempfile.mkdtemp(prefix="bench-"))


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(kind: str, **env) -> Server:
    app = {
        "ours": "main:app",
        "naive": "bench.naive_app:app",
        "ours-core": "bench.core_app:app",
        "naive-core": "bench.core_app:app",
    }[kind]
    env = {k.upper(): str(v) for k, v in env.items()}
    env.setdefault("DATA_DIR", str(TMP / f"{kind}-{time.monotonic_ns()}"))
    env.setdefault("LOG_LEVEL", "warning")
    env.setdefault("RATE_LIMIT", "10000000/minute")  # a load test is not abuse
    env.setdefault("RATE_LIMIT_RUN_TASK", "10000000/minute")
    if kind == "naive-core":
        env["BENCH_NAIVE"] = "1"
    return Server(env, TMP / f"{kind}-{time.monotonic_ns()}.log", app=app)  # inherits the raised fd limit (main)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# 1. Throughput and latency ---------------------------------------------------------------


def measured_round(server: Server | Nginx, core: bool, rate: float = 0, **sizes) -> dict:
    """One round, with this (the client's) process's garbage collector off: a full collection
    here, over the round's growing lists of receipts, paused the client for 30-45 ms while events
    arrived, and that pause was counted as the server's latency."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_round(server, core, rate, **sizes))
    finally:
        gc.enable()


async def _round(
    server: Server | Nginx,
    core: bool,
    rate: float = 0,
    tasks: int = TASKS,
    viewers: int = SUBS,
    api_probe: bool = False,
    limit_s: float | None = None,
) -> dict:
    """`tasks` streams with `viewers` viewers each. `api_probe`: also time every POST and, from
    another process (`poll_status`), a GET of a task's status every ~100 ms while the round runs
    ("api" in the result): how the API answers while it streams. `limit_s`: a round still running
    then is measured over what arrived so far ("truncated"), its tasks cancelled, and each viewer
    counted exact if it got 1..n with no gap or repeat."""
    post_s: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        t0 = time.time()
        stop = asyncio.Event()
        if core:
            prepared = (await client.post("/bench/prepare", params={"tasks": tasks})).json()
            ids = prepared["streams"]
        else:

            async def post(n: int) -> httpx.Response:
                sent = time.perf_counter()
                answer = await client.post(
                    "/api/run_task",
                    json={
                        "user_requirement": f"Build app number {n} with login, search, payments and reports",
                        "skip_confirmation": True,
                    },
                )
                post_s.append(time.perf_counter() - sent)
                return answer

            ids = [r.json()["task_id"] for r in await asyncio.gather(*(post(n) for n in range(tasks)))]
        subs = [Subscriber(tid) for tid in ids for _ in range(viewers)]
        readers = [asyncio.create_task(subscribe("127.0.0.1", server.port, s, stop=stop)) for s in subs]
        status_s: list[float] = []
        poller = asyncio.create_task(poll_status(server.url, ids, stop, status_s)) if api_probe else None
        if core:
            await asyncio.sleep(0.3)  # all subscribers connected before the flood starts
            t0 = time.time()
            await client.post("/bench/start", params={"batch": prepared["batch"], "tokens": 2000, "rate": rate})

        async def finished() -> None:
            """Every subscriber saw its terminal event, or every stream ended (the baseline's
            viewers share a queue, so most never see the terminal event) plus a grace second."""
            wanted = set(ids)
            while not all(s.terminal for s in subs):
                try:
                    listing = (await client.get("/api/streams")).json()
                except httpx.TimeoutException:
                    continue  # an overloaded server (the top of a sweep): ask again
                if wanted <= {i["task_id"] for i in listing["finished"]}:
                    await asyncio.sleep(1.0)
                    return
                await asyncio.sleep(0.2)

        truncated = False
        try:
            await asyncio.wait_for(finished(), timeout=limit_s or 600)
        except TimeoutError:
            if limit_s is None:
                raise
            truncated = True
        stop.set()
        await asyncio.gather(*readers)
        status_errors = await poller if poller is not None else 0
        expected = {}
        for tid in ids:
            expected[tid] = max((max(s.sequences, default=0) for s in subs if s.task_id == tid), default=0)
        if truncated:
            for tid in ids:  # its viewers are gone, so the server answers again
                await client.post(f"/api/task/{tid}/cancel")
        elif not core:
            for tid in ids:
                expected[tid] = (await client.get(f"/api/task/{tid}/status")).json()["last_sequence"]
    delivered = sum(len(s.sequences) for s in subs)
    last = max(s.last_event_at or t0 for s in subs)
    if truncated:
        exact = sum(s.sequences == list(range(1, len(s.sequences) + 1)) for s in subs)
    else:
        exact = sum(s.sequences == list(range(1, expected[s.task_id] + 1)) for s in subs)
    latencies = [x for s in subs for x in s.latencies]
    windows = latency_windows(subs, t0)
    return {
        "delivered": delivered,
        "seconds": last - t0,
        "events_per_s": delivered / (last - t0),
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        # Per second of the round, so a stall (e.g. while crews start) is not averaged away.
        "worst_window_p99_ms": max((w["p99_ms"] for w in windows), default=float("nan")),
        "first_3s_p99_ms": pct(first_seconds(subs, t0, 3.0), 0.99) * 1000,
        "windows": windows,
        "subscribers_exact": exact,
        "subscribers": len(subs),
        "lost": None if truncated else sum(expected[s.task_id] for s in subs) - delivered,
        **({"truncated_at_s": limit_s} if truncated else {}),
        "bytes_per_viewer": sum(s.received_bytes for s in subs) / len(subs),
        **(
            {"api": {"post": latency_summary(post_s), "status": {**latency_summary(status_s), "errors": status_errors}}}
            if api_probe
            else {}
        ),
    }


async def poll_status(url: str, ids: list[str], stop: asyncio.Event, out: list[float]) -> int:
    """The times of GETs of the tasks' status every ~100 ms until `stop`, into `out`, as
    bench/api_probe.py measures them from its own process; returns how many failed."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.api_probe", url, *ids, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    lines = probe.stdout
    assert lines is not None
    errors = 0

    async def read() -> None:
        nonlocal errors
        async for line in lines:
            if line.strip() == b"error":
                errors += 1
            else:
                out.append(float(line))

    reader = asyncio.create_task(read())
    await stop.wait()
    probe.terminate()
    await probe.wait()
    await reader
    return errors


def latency_summary(seconds: list[float]) -> dict:
    return {
        "n": len(seconds),
        "p50_ms": pct(seconds, 0.5) * 1000,
        "p99_ms": pct(seconds, 0.99) * 1000,
        "max_ms": max(seconds, default=float("nan")) * 1000,
    }


def first_seconds(subs: list[Subscriber], t0: float, seconds: float) -> list[float]:
    """The latencies of the events received in the first `seconds` of a round."""
    return [x for s in subs for x, at in zip(s.latencies, s.received, strict=True) if at - t0 < seconds]


def latency_windows(subs: list[Subscriber], t0: float) -> list[dict]:
    """p50, p99 and max latency of the events received in each second of a round."""
    by_second: dict[int, list[float]] = {}
    for s in subs:
        for latency, at in zip(s.latencies, s.received, strict=True):
            by_second.setdefault(int(at - t0), []).append(latency)
    return [
        {
            "second": second,
            "n": len(values),
            "p50_ms": pct(values, 0.5) * 1000,
            "p99_ms": pct(values, 0.99) * 1000,
            "max_ms": max(values) * 1000,
        }
        for second, values in sorted(by_second.items())
    ]


def throughput(kind: str, core: bool, rate: float = 0, **env) -> dict:
    server = start(kind, max_concurrent_tasks=TASKS, **env)
    try:
        measured_round(server, core, rate)  # warm-up: imports, model objects, first crews
        rounds = [measured_round(server, core, rate) for _ in range(ROUNDS)]
    finally:
        server.stop()
    return median_round(rounds)


def median_round(rounds: list[dict]) -> dict:
    """The median round by delivered events/s, with what holds over all rounds: exactness, losses,
    and the worst 1-s window of any round (a stall is a stall whichever round it falls in)."""
    best = sorted(rounds, key=lambda r: r["events_per_s"])[len(rounds) // 2]
    best["rounds_events_per_s"] = [round(r["events_per_s"]) for r in rounds]
    best["all_exact"] = all(r["subscribers_exact"] == r["subscribers"] for r in rounds)
    best["lost_total"] = sum(r["lost"] for r in rounds)
    best["rounds_worst_window_p99_ms"] = [round(r["worst_window_p99_ms"], 1) for r in rounds]
    best["rounds_max_ms"] = [round(r["max_ms"], 1) for r in rounds]
    return best


# 2. Publish cost --------------------------------------------------------------------------


def publish_cost(manager: StreamManager, n: int) -> dict:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    manager.start(loop)
    manager.open("t")

    async def drain() -> None:
        async for _ in manager.subscribe("t"):
            pass

    drained = asyncio.run_coroutine_threadsafe(drain(), loop)
    times: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        manager.publish("t", "Agent", "thought", "token", None)
        times.append(clock() - t)
    manager.publish("t", "Agent", "end", "", None)
    drained.result(timeout=60)  # the subscriber saw the end: nothing is left pending
    loop.call_soon_threadsafe(loop.stop)
    return {"median_us": statistics.median(times) / 1000, "p99_us": pct(times, 0.99) / 1000, "n": n}


# 3. Idle connections ----------------------------------------------------------------------


async def _idle(
    server: Server, n: int = IDLE_N, sources: int = 1, while_idle: Callable[[], Awaitable[dict]] | None = None
) -> dict:
    """`sources` > 1 spreads the viewers over that many source addresses 127.0.0.1, .2, ...: one
    source address has only the ephemeral port range's ports (~28,000) towards one server port.
    `while_idle` is awaited once all are connected and idle; its answer is the result's "while_idle"."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.post(
            "/api/run_task", json={"user_requirement": "Build an idle app", "skip_confirmation": False}
        )
        task_id = r.json()["task_id"]
        while (status := (await client.get(f"/api/task/{task_id}/status")).json())["status"] != "awaiting_confirmation":
            await asyncio.sleep(0.1)
        tail = status["last_sequence"]  # idle viewers wait at the live tail; nothing is replayed
        release = asyncio.Event()
        warm = asyncio.Event()
        first = asyncio.create_task(hold_idle("127.0.0.1", server.port, task_id, warm, release, tail))
        await warm.wait()
        await asyncio.sleep(1.0)
        before = rss_kb(server.proc.pid)
        gate = asyncio.Semaphore(200)
        holders = []

        async def one(k: int) -> bool:
            connected = asyncio.Event()
            source = f"127.0.0.{1 + k % sources}" if sources > 1 else None  # else as the kernel picks
            async with gate:
                task = asyncio.create_task(
                    hold_idle("127.0.0.1", server.port, task_id, connected, release, tail, local_host=source)
                )
                await connected.wait()
            return await task

        holders = [asyncio.create_task(one(k)) for k in range(n)]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            streams = (await client.get("/api/streams")).json()["active"]
            subs = next(s["subscribers"] for s in streams if s["task_id"] == task_id)
            if subs >= n + 1:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        after = rss_kb(server.proc.pid)
        measured = await while_idle() if while_idle is not None else None
        release.set()
        ok = sum(await asyncio.gather(*holders)) + await first
    return {
        "connections": n,
        "connected_ok": ok - 1,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_connection": (after - before) / n,
        **({"while_idle": measured} if measured is not None else {}),
    }


def idle(kind: str) -> dict:
    raise_fd_limit()
    server = start(kind)
    try:
        return asyncio.run(_idle(server))
    finally:
        server.stop()


# 4. Time to first event -------------------------------------------------------------------


async def _ttfe(server: Server | Nginx) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        for n in range(TTFE_N + 3):
            t0 = time.time()
            r = await client.post(
                "/api/run_task", json={"user_requirement": f"Build app {n}", "skip_confirmation": True}
            )
            task_id = r.json()["task_id"]
            sub = await subscribe("127.0.0.1", server.port, Subscriber(task_id), first_only=True)
            if n >= 3 and sub.first_event_at is not None:  # the first runs warm caches
                out.append(sub.first_event_at - t0)
            # One task at a time: end this one so the next POST finds an idle executor (at 100
            # tokens/s a crew runs ~10 s; left running, every 21st task waited seconds for a slot).
            await client.post(f"/api/task/{task_id}/cancel")  # a 409 if it already ended: fine
            while (await client.get(f"/api/task/{task_id}/status")).json()["status"] in ("queued", "running"):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
    return out


def ttfe(kind: str) -> dict:
    server = start(kind)
    try:
        samples = asyncio.run(_ttfe(server))
    finally:
        server.stop()
    return {"median_ms": statistics.median(samples) * 1000, "p90_ms": pct(samples, 0.9) * 1000, "n": len(samples)}


# 5. One crew on the local model -----------------------------------------------------------


async def _crew(server: Server) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        t0 = time.time()
        r = await client.post(
            "/api/run_task", json={"user_requirement": "Build a todo app with reminders", "skip_confirmation": True}
        )
        sub = await subscribe("127.0.0.1", server.port, Subscriber(r.json()["task_id"]))
        wall = time.time() - t0
    return {"wall_s": wall, "tokens": sub.thoughts, "tokens_per_s": sub.thoughts / wall, "completed": sub.terminal}


def crew(kind: str) -> dict:
    server = start(kind, llm_provider="local")
    try:
        return asyncio.run(_crew(server))
    finally:
        server.stop()


# 6. Scaled out ----------------------------------------------------------------------------


def replicas() -> dict:
    """As docker-compose runs it (bench/topology.py): two API replicas behind the project's
    nginx.conf, two Celery workers, real Redis and PostgreSQL. Crews run in the workers, so the
    replicas only stream."""
    folder = TMP / f"replicas-{time.monotonic_ns()}"
    with deployment(folder, replicas=2, workers=2, threads=TASKS // 2, private_redis=False) as d:
        measured_round(d.nginx, False)  # warm-up: imports and first crews in both workers
        rounds = [measured_round(d.nginx, False) for _ in range(ROUNDS)]
        paced = median_round(rounds)
        first = asyncio.run(_ttfe(d.nginx))
        idle = asyncio.run(_idle(d.servers[0], IDLE_N // 5))
    return {
        "paced_100tps": paced,
        "ttfe": {"median_ms": statistics.median(first) * 1000, "p90_ms": pct(first, 0.9) * 1000, "n": len(first)},
        "idle_per_replica": idle,
    }


# -------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": QUICK,
    }


def main() -> None:
    raise_fd_limit()  # servers started from here inherit it: 10,000 idle viewers need the fds
    results: dict = {"machine": machine()}
    steps = [
        (
            "publish",
            lambda: {
                "ours": publish_cost(StreamManager(MemoryEventBackend()), PUBLISH_N),
                "naive": publish_cost(StreamManager(NaiveEventBackend()), PUBLISH_N // 10),
            },
        ),
        ("throughput_crew", lambda: {"ours": throughput("ours", False), "naive": throughput("naive", False)}),
        ("throughput_core", lambda: {"ours": throughput("ours-core", True), "naive": throughput("naive-core", True)}),
        # The same flood with EVENT_BACKEND=redis, against the memory backend in the same section
        (
            "throughput_core_redis",
            lambda: {
                "memory": throughput("ours-core", True),
                "redis": throughput("ours-core", True, event_backend="redis", redis_url=ensure_redis()),
            },
        ),
        # 20 streams x 850 events/s = 17,000 published/s = 51,000 delivered/s to 3 viewers each
        (
            "latency_core_at_target",
            lambda: {
                "ours": throughput("ours-core", True, rate=850),
                "naive": throughput("naive-core", True, rate=850),
            },
        ),
        # A cloud model's pace: 100 tokens/s per agent, through CrewAI
        (
            "latency_crew_100tps",
            lambda: {
                "ours": throughput("ours", False, scripted_token_delay_ms=10),
                "naive": throughput("naive", False, scripted_token_delay_ms=10),
            },
        ),
        ("ttfe", lambda: {"ours": ttfe("ours"), "naive": ttfe("naive")}),
        ("idle", lambda: {"ours": idle("ours"), "naive": idle("naive")}),
        ("crew_local", lambda: {"ours": crew("ours"), "naive": crew("naive")}),
        ("stream_memory", lambda: stream_memory(QUICK)),
        ("replicas", replicas),
    ]
    # Issue 27's sections, each in its own module (curves, scale-out, the peer) and issue 26's
    # per-door cost: every module lists its (name, step) pairs in STEPS.
    for module in ("bench.sweeps", "bench.scale_out", "bench.doors", "bench.peer"):
        steps += importlib.import_module(module).STEPS
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    out = ROOT / "docs" / ("benchmarks-quick.json" if QUICK or only else "benchmarks.json")
    for name, step in steps:
        if only and name not in only:
            continue
        print(f"== {name} ...", flush=True)
        results[name] = step()
        print(json.dumps(results[name], indent=1), flush=True)
        out.write_text(json.dumps(results, indent=2))  # kept even if a later section fails
    subprocess.run([sys.executable, "-m", "bench.report", str(out)], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
