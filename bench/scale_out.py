"""Issue 27's scale-out sections: what each shared part pays per event, the capacity of 1, 2 and 3
API replicas (each with a Celery worker) at a cloud model's pace, and one check of the capacity
plan (docs/capacity.md) on this machine.

Every section runs the scaled-out deployment (bench/topology.py) with a private redis-server, so
Redis's command counts, bytes and CPU are the bench's alone, and a fresh PostgreSQL database,
whose rows, sizes and commits are read from its own statistics. Load: (1c)'s paced crews
(`SCRIPTED_TOKEN_DELAY_MS=10`, 100 tokens/s per agent), 3 SSE viewers per task, through Nginx.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import redis

from bench import run
from bench.probe import CpuSampler, saturated
from bench.sweeps import Profile
from bench.topology import Deployment, database_name, deployment
from tests.support.real_services import PG_HOST, PG_PORT, PG_USER

P99_LIMIT_MS = 50.0  # the latency target: a point holds when its worst 1-s window's p99 is within it
# A quick run (a smoke test, not for quoting) paces the crews 4× faster, so a round lasts ~6 s
# instead of ~25 s, with 4× fewer tasks for about the same events/s.
TOKEN_DELAY_MS = 2.5 if run.QUICK else 10.0
# Concurrent tasks; the search starts at LADDER[START] and goes up while points hold, down while not.
LADDER = [1, 2, 4] if run.QUICK else [1, 2, 5, 10, 20, 30, 40, 60]
START = 1 if run.QUICK else 2
REPLICAS = (1, 2) if run.QUICK else (1, 2, 3)
COST_TASKS = 4 if run.QUICK else 20
IDLE_S = 1.0 if run.QUICK else 4.0  # the window that measures each deployment's CPU with no load
# The plan's headroom (docs/capacity.md): a Python process (one GIL) planned at half a core, the
# machine at 60 % of its cores — what is left absorbs crew starts and collections, which is
# what a 1-s window's p99 sees.
PROCESS_CORE = 0.5
MACHINE_SHARE = 0.6
# What the check's plan is for: this many viewers per task, as every other section.
VIEWERS = run.SUBS

_this_run: dict[str, Any] = {}  # costs measured by shared_costs, read by capacity_check in the same run


# One measured point ---------------------------------------------------------------------------


def paced_round(d: Deployment, tasks: int) -> dict:
    """bench.run's round with `tasks` concurrent tasks × 3 viewers, through Nginx."""
    return run.measured_round(d.nginx, False, tasks=tasks)


def warm_up(d: Deployment) -> None:
    """Two tasks per worker run until their crews stream, then are cancelled: each worker has
    built its runtime and imported CrewAI's lazy parts, so the first point is not a cold start."""

    async def go() -> None:
        async with httpx.AsyncClient(base_url=d.nginx.url, timeout=60) as client:
            posts = [
                client.post("/api/run_task", json={"user_requirement": f"Warm app {n}", "skip_confirmation": True})
                for n in range(2 * len(d.workers))
            ]
            ids = [r.json()["task_id"] for r in await asyncio.gather(*posts)]
            deadline = time.monotonic() + 120
            for tid in ids:
                while (await client.get(f"/api/task/{tid}/status")).json()["last_sequence"] < 20:
                    assert time.monotonic() < deadline, "warm-up tasks did not start streaming"
                    await asyncio.sleep(0.1)
            for tid in ids:
                await client.post(f"/api/task/{tid}/cancel")
            for tid in ids:
                while (await client.get(f"/api/task/{tid}/status")).json()["status"] in ("queued", "running"):
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)

    asyncio.run(go())


def _pg(database_url: str) -> psycopg.Connection:
    return psycopg.connect(
        f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={database_name(database_url)}", autocommit=True
    )


def counters(d: Deployment) -> dict:
    """What the shared parts have done so far: Redis's calls and time per command, bytes in and
    out, memory; this database's rows, sizes, commits; the cluster's WAL position."""
    out: dict[str, Any] = {}
    if d.redis:
        client: redis.Redis = d.redis.client
        out["redis_commands"] = {
            name.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
            for name, v in client.info("commandstats").items()
        }
        stats = client.info("stats")
        out["redis_in_bytes"] = stats["total_net_input_bytes"]
        out["redis_out_bytes"] = stats["total_net_output_bytes"]
        out["redis_memory_bytes"] = client.info("memory")["used_memory"]
    with _pg(d.database_url) as conn:
        out["pg_tables"] = {
            name: {"ins": ins, "upd": upd, "del": dele, "bytes": size}
            for name, ins, upd, dele, size in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, pg_total_relation_size(relid)"
                " FROM pg_stat_user_tables"
            ).fetchall()
        }
        out["pg_event_rows"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
        out["pg_commits"] = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]  # type: ignore[index]
        out["pg_wal_lsn"] = conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()[0]  # type: ignore[index]
    return out


def wait_for_pg_statistics(d: Deployment, timeout: float = 15.0) -> None:
    """PostgreSQL's per-table counts reach pg_stat_user_tables when a backend flushes them (about
    every second while it is busy, later once idle): wait until the events table's inserts
    equal its rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = counters(d)
        if now["pg_tables"].get("events", {}).get("ins") == now["pg_event_rows"]:
            return
        time.sleep(0.5)


def deltas(before: dict, after: dict, published: float, tasks: int) -> dict:
    """Per published event (and, for what a task pays once, per task)."""
    per = max(published, 1.0)
    out: dict[str, Any] = {}
    if "redis_commands" in after:
        commands = {}
        for name, now in after["redis_commands"].items():
            was = before["redis_commands"].get(name, {"calls": 0, "usec": 0})
            calls = now["calls"] - was["calls"]
            if calls and name not in ("info", "ping"):  # the bench's own reads and the pools' checks
                commands[name] = {
                    "calls": calls,
                    "per_event": round(calls / per, 4),
                    "per_task": round(calls / tasks, 1),
                    "usec_per_event": round((now["usec"] - was["usec"]) / per, 3),
                }
        out["redis_commands"] = dict(sorted(commands.items(), key=lambda kv: -kv[1]["calls"]))
        out["redis_calls_per_event"] = round(sum(c["calls"] for c in commands.values()) / per, 3)
        out["redis_usec_per_event"] = round(sum(c["usec_per_event"] for c in commands.values()), 3)
        out["redis_in_bytes_per_event"] = round((after["redis_in_bytes"] - before["redis_in_bytes"]) / per, 1)
        out["redis_out_bytes_per_event"] = round((after["redis_out_bytes"] - before["redis_out_bytes"]) / per, 1)
        out["redis_memory_bytes_per_event"] = round(
            (after["redis_memory_bytes"] - before["redis_memory_bytes"]) / per, 1
        )
    tables = {}
    for name, now in after["pg_tables"].items():
        was = before["pg_tables"].get(name, {"ins": 0, "upd": 0, "del": 0, "bytes": 0})
        change = {k: now[k] - was[k] for k in ("ins", "upd", "del", "bytes")}
        if any(change.values()):
            tables[name] = {
                **change,
                "rows_per_task": round((change["ins"] + change["upd"] + change["del"]) / tasks, 1),
                "bytes_per_event": round(change["bytes"] / per, 1),
            }
    out["pg_tables"] = tables
    out["pg_event_rows_per_event"] = round((after["pg_event_rows"] - before["pg_event_rows"]) / per, 3)
    out["pg_commits_per_event"] = round((after["pg_commits"] - before["pg_commits"]) / per, 4)
    out["pg_bytes_per_event"] = round(sum(t["bytes"] for t in tables.values()) / per, 1)
    # The WAL is the cluster's: other sessions on this machine write to it too (an upper bound).
    out["pg_wal_bytes_per_event_upper_bound"] = round((after["pg_wal_lsn"] - before["pg_wal_lsn"]) / per, 1)
    return out


def measure(d: Deployment, tasks: int, shared_parts: bool = True) -> dict:
    """One round of `tasks` concurrent tasks × 3 viewers, with where the CPU went and, when
    `shared_parts`, what Redis and PostgreSQL did per event."""
    before = counters(d) if shared_parts else {}
    t0 = time.monotonic()
    # py-spy (--gil) on the first replica and the first worker: is a GIL the limit there?
    with (
        CpuSampler(d.cpu_groups()) as sampler,
        Profile(d.servers[0].proc.pid) as api_spy,
        Profile(d.workers[0].proc.pid) as worker_spy,
    ):
        point = paced_round(d, tasks)
    elapsed = time.monotonic() - t0
    cpu = sampler.result()
    windows = point.pop("windows", [])
    # which second of the round: 0 is every crew starting at once, later ones agents handing over
    point["worst_window_second"] = max(windows, key=lambda w: w["p99_ms"])["second"] if windows else None
    published = (point["delivered"] + point["lost"]) / run.SUBS
    point["tasks"] = tasks
    point["published"] = published
    point["published_per_task_per_s"] = round(published / tasks / point["seconds"], 1)
    point["held"] = held(point)
    point["cpu_pct"] = cpu
    point["saturated"] = saturated(cpu)
    point["profile"] = {"api_1": api_spy.result, "worker_1": worker_spy.result}
    # CPU-seconds per event, in µs: the cost that carries over to a bigger deployment. The API
    # replicas, Nginx and the client work per delivered event (fan-out to viewers); the workers,
    # Redis and PostgreSQL per published event.
    # The CPU the load added (above each process's idle share, reported apart as `idle_cpu_pct`).
    fan_out = {"nginx", "client"} | {g for g in cpu if g.startswith("api_")}
    point["idle_cpu_pct"] = d.idle_cpu_pct
    point["cpu_us_per_event"] = {
        group: round(
            max(0.0, share - d.idle_cpu_pct.get(group, 0.0))
            / 100
            * elapsed
            * 1e6
            / max(1, point["delivered"] if group in fan_out else published),
            2,
        )
        for group, share in cpu.items()
        if group != "machine"
    }
    point["cpu_us_per_event"]["api"] = round(
        sum(v for k, v in point["cpu_us_per_event"].items() if k.startswith("api_")), 2
    )
    if shared_parts:
        wait_for_pg_statistics(d)
        point["shared_parts"] = deltas(before, counters(d), published, tasks)
    return point


def held(point: dict) -> bool:
    return (
        point["worst_window_p99_ms"] <= P99_LIMIT_MS
        and point["lost"] == 0
        and point["subscribers_exact"] == point["subscribers"]
    )


# The sections ---------------------------------------------------------------------------------


@contextmanager
def configured(replicas: int, workers: int, threads: int, label: str) -> Iterator[Deployment]:
    folder = run.TMP / f"{label}-{time.monotonic_ns()}"
    with deployment(folder, replicas, workers, threads, scripted_token_delay_ms=str(TOKEN_DELAY_MS)) as d:
        warm_up(d)
        # What each process burns with no task running (heartbeats, leases, the reapers, Redis
        # reads that find nothing), and the machine's busy share from whatever else runs on it.
        with CpuSampler(d.cpu_groups()) as idle:
            time.sleep(IDLE_S)
        d.idle_cpu_pct = idle.result()
        yield d


def shared_costs() -> dict:
    """A fixed load on one replica and one worker: what each shared part pays per event."""
    with configured(1, 1, COST_TASKS + 2, "costs") as d:
        point = measure(d, COST_TASKS)
    _this_run["costs"] = point
    return point


def search(d: Deployment, label: str) -> list[dict]:
    """From LADDER[START] upwards while points hold, or downwards until one does: the points
    measured, in ladder order."""
    points: dict[int, dict] = {}
    step = 0
    index = START
    while 0 <= index < len(LADDER):
        point = measure(d, LADDER[index])
        points[index] = point
        print(
            f"   {label}, {point['tasks']} tasks: worst window p99 {point['worst_window_p99_ms']:.1f} ms, "
            f"{point['events_per_s']:.0f} ev/s, machine {point['cpu_pct']['machine']} %, {point['saturated']}, "
            f"GIL busy { ({k: v.get('gil_busy_share') for k, v in point['profile'].items()}) }",
            flush=True,
        )
        step = step or (1 if point["held"] else -1)
        if point["held"] != (step == 1):
            break  # going up, one failed; going down, one held
        index += step
    return [points[i] for i in sorted(points)]


def scale_out() -> dict:
    """Capacity of 1, 2, 3 replicas (each with its worker): the largest task count on the ladder
    whose round holds (worst 1-s window p99 ≤ 50 ms, nothing lost, every viewer exact)."""
    configs: dict[str, dict[str, Any]] = {}
    for n in REPLICAS:
        with configured(n, n, math.ceil(max(LADDER) / n) + 2, f"scale-{n}") as d:
            points = search(d, f"{n} replica(s)")
        passing = [p for p in points if p["held"]]
        capacity = passing[-1] if passing else None
        knee = next((p for p in points if not p["held"] and (capacity is None or p["tasks"] > capacity["tasks"])), None)
        configs[str(n)] = {
            "capacity_tasks": capacity["tasks"] if capacity else 0,
            "capacity_events_per_s": round(capacity["events_per_s"]) if capacity else 0,
            "knee": {
                "tasks": knee["tasks"],
                "saturated": knee["saturated"],
                "cpu_pct": knee["cpu_pct"],
                "gil_busy_share": {name: spied.get("gil_busy_share") for name, spied in knee["profile"].items()},
            }
            if knee
            else None,
            "points": points,
        }
    one: int = configs["1"]["capacity_tasks"]
    for replicas, config in configs.items():
        config["efficiency"] = round(config["capacity_tasks"] / (int(replicas) * one), 3) if one else None
    _this_run["scale_out"] = configs
    return {"ladder": LADDER, "p99_limit_ms": P99_LIMIT_MS, "configs": configs}


def api_split(configs: dict[str, dict[str, Any]]) -> dict | None:
    """The API's CPU split in two, from one task count measured with 1 and with 2 replicas: what
    the replicas pay together per delivered event (`fan_out`: encoding, writing to viewers) and
    what each replica pays per published event it reads from Redis (`read`: every replica reads
    every task one of its viewers watches; round-robin viewers watch nearly all). Per delivered
    event, N replicas cost A(N) = fan_out + N × read / V, so read = (A(2) − A(1)) × V."""
    one = {p["tasks"]: p for p in configs.get("1", {}).get("points", [])}
    two = {p["tasks"]: p for p in configs.get("2", {}).get("points", [])}
    common = sorted(set(one) & set(two))
    if not common:
        return None
    tasks = common[-1]
    a1, a2 = one[tasks]["cpu_us_per_event"]["api"], two[tasks]["cpu_us_per_event"]["api"]
    read = max(0.0, (a2 - a1) * run.SUBS)
    return {"tasks": tasks, "fan_out_us": round(max(0.0, a1 - read / run.SUBS), 2), "read_us": round(read, 2)}


def plan(costs: dict, tasks: int, viewers: int, cores: float, split: dict | None = None) -> dict:
    """docs/capacity.md's plan, from the measured per-event costs: processes for `tasks`
    concurrent tasks with `viewers` each, and the cores the whole needs (on this box the client's
    cost is counted too: it shares the cores). Without `split`, the API's cost is one replica's."""
    rate = costs["published_per_task_per_s"]  # events each task publishes per second
    published = tasks * rate
    delivered = published * viewers
    us = costs["cpu_us_per_event"]
    fan_out, read = (split["fan_out_us"], split["read_us"]) if split else (us["api"], 0.0)
    idle = costs["idle_cpu_pct"]
    api_idle = statistics.mean(v for k, v in idle.items() if k.startswith("api_")) / 100  # cores per replica
    worker_idle = idle["workers"] / 100  # one worker in shared_costs

    # The fewest replicas, each within PROCESS_CORE, that carry the fan-out, each one's reads and
    # its idle share; none when a replica's reading and idling alone fill it (the design limit in
    # docs/capacity.md).
    def api_cores_for(r: int) -> float:
        return (delivered * fan_out + r * published * read) / 1e6 + r * api_idle

    replicas = next((r for r in range(1, 257) if api_cores_for(r) <= r * PROCESS_CORE), None)
    api_cores = api_cores_for(replicas or 256)
    workers = max(1, math.ceil(published * us["workers"] / 1e6 / (PROCESS_CORE - worker_idle)))
    worker_cores = published * us["workers"] / 1e6 + workers * worker_idle
    others = (
        published * (us["redis"] + us["postgres"]) / 1e6
        + delivered * (us["nginx"] + us["client"]) / 1e6
        + (idle["redis"] + idle["postgres"] + idle["nginx"]) / 100
    )
    return {
        "tasks": tasks,
        "viewers_per_task": viewers,
        "published_per_s": round(published),
        "delivered_per_s": round(delivered),
        "api_replicas": replicas,
        "workers": workers,
        "redis_core": round(published * us["redis"] / 1e6 + idle["redis"] / 100, 3),
        "postgres_core": round(published * us["postgres"] / 1e6 + idle["postgres"] / 100, 3),
        "cores_needed": round(api_cores + worker_cores + others, 2) if replicas else None,
        "cores_available": round(cores * MACHINE_SHARE, 2),
        "api_split": split,
    }


def capacity_check() -> dict:
    """The plan's check: the largest task count the plan says this box carries, in the processes
    it prescribes, run once; held = worst 1-s window p99 ≤ 50 ms, nothing lost, every viewer exact."""
    costs = _this_run.get("costs") or shared_costs()
    split = api_split(_this_run.get("scale_out", {}))
    cores = float(os.cpu_count() or 1)

    def fits(tasks: int) -> bool:
        prescribed = plan(costs, tasks, VIEWERS, cores, split)
        return prescribed["api_replicas"] is not None and prescribed["cores_needed"] <= prescribed["cores_available"]

    tasks = 1
    while fits(tasks + 1):
        tasks += 1
    prescribed = plan(costs, tasks, VIEWERS, cores, split)
    with configured(prescribed["api_replicas"] or 1, prescribed["workers"], tasks + 2, "check") as d:
        point = measure(d, tasks, shared_parts=False)
    # docs/capacity.md's examples, from the same costs
    examples = [plan(costs, t, VIEWERS, cores, split) for t in (20, 100, 500)]
    return {"plan": prescribed, "point": point, "held": point["held"], "examples": examples}


STEPS: list = [("shared_costs", shared_costs), ("scale_out", scale_out), ("capacity_check", capacity_check)]
