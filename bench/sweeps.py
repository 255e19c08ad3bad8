"""Issue 27's curves: how the service answers as one size grows, and what saturates where.

- sweep_tasks: concurrent tasks 1 → 5 → 20 → 50 → 100, 3 viewers each;
- sweep_viewers: viewers per task 1 → 10 → 100 → 1,000 on 5 tasks;
- sweep_idle: idle viewers on one process 1,000 → 10,000 → 30,000 (as many as the fd limit allows).

The first two run the real service (`main:app`) with the scripted provider at 100 tokens/s per
agent (SCRIPTED_TOKEN_DELAY_MS=10); each point is one round of bench/run.py's `_round`, with the
API's CPU (and this client's) sampled over it and py-spy sampling the API process, so what
saturates at the point `knee` names is measured, not guessed. `draw_sweeps` plots each sweep
from the results (bench/report.py calls it).

BENCH_QUICK=1 (a smoke run of the machinery, not for quoting): two points per sweep, no warm-up
round, and 500 tokens/s per agent, so that a round takes ~5 s instead of a crew's ~25 s.
"""

from __future__ import annotations

import asyncio
import math
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.probe import CpuSampler, fixed, saturated
from bench.run import QUICK, TMP, _idle, measured_round, start
from tests.support.server_process import Server

TOKEN_DELAY_MS = 2 if QUICK else 10  # 10: 100 tokens/s per agent, a fast cloud model's pace
TASK_POINTS = [1, 5] if QUICK else [1, 5, 20, 50, 100]
VIEWERS_PER_TASK = 3
VIEWER_POINTS = [1, 10] if QUICK else [1, 10, 100, 1000]
VIEWER_TASKS = 5
IDLE_POINTS = [1000, 2000] if QUICK else [1000, 10_000, 30_000]
IDLE_CPU_S = 2 if QUICK else 15  # 15: one SSE_HEARTBEAT_S period, one keep-alive to every viewer
P99_TARGET_MS = 50  # per API process, up to 20 concurrent tasks
IDLE_TARGET_KB = 16
FD_MARGIN = 500  # fds a server (or this client) needs besides its viewers' sockets
# A round runs a crew's ~25 s; past the knee it can run for many minutes (1,000 viewers on each
# of 5 tasks: ~10 million events): such a point is measured over its first minute.
ROUND_LIMIT_S = 60
PROFILE_S = 3 if QUICK else 5  # from 1 s into a round: crews started, viewers connected
PROFILE_HZ = 100


def knee(points: list[dict]) -> tuple[int, str] | None:
    """The first point where the service stops keeping up, and why: its worst 1-s window's p99
    is above P99_TARGET_MS, or its delivered events/s grew less than half as much as the offered
    load (tasks × viewers per task: the events/s it would deliver if every viewer kept pace) did
    from the point before. None: it kept up over the whole sweep."""
    for i, point in enumerate(points):
        if point["worst_window_p99_ms"] > P99_TARGET_MS:
            return i, f"worst 1-s window p99 {point['worst_window_p99_ms']:.1f} ms > {P99_TARGET_MS} ms"
        if i:
            before = points[i - 1]
            load = point["load"] / before["load"]
            delivered = point["events_per_s"] / before["events_per_s"]
            if delivered < 0.5 * load:
                return i, f"delivered events/s grew {delivered:.2f}x for {load:.0f}x the load"
    return None


def idle_knee(points: list[dict]) -> tuple[int, str] | None:
    """The first idle point over the memory target or with a viewer refused."""
    for i, point in enumerate(points):
        if point["connected_ok"] < point["connections"]:
            return i, f"{point['connections'] - point['connected_ok']} viewers refused"
        if point["kb_per_connection"] > IDLE_TARGET_KB:
            return i, f"{point['kb_per_connection']:.1f} KB per idle viewer > {IDLE_TARGET_KB} KB"
    return None


def streaming_server(tasks: int) -> Server:
    return start("ours", max_concurrent_tasks=tasks, scripted_token_delay_ms=TOKEN_DELAY_MS)


def point(server: Server, tasks: int, viewers: int) -> dict:
    with CpuSampler({"api": fixed(server.proc.pid)}) as cpu, Profile(server.proc.pid) as spied:
        r = measured_round(server, False, tasks=tasks, viewers=viewers, api_probe=True, limit_s=ROUND_LIMIT_S)
    windows = r["windows"]
    return {
        "tasks": tasks,
        "viewers_per_task": viewers,
        "load": tasks * viewers,
        "events_per_s": r["events_per_s"],
        "seconds": r["seconds"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "worst_window_p50_ms": max((w["p50_ms"] for w in windows), default=math.nan),
        "worst_window_p99_ms": r["worst_window_p99_ms"],
        "api": r["api"],
        "bytes_per_viewer": r["bytes_per_viewer"],
        "cpu": cpu.result(),
        "saturated": saturated(cpu.result()),
        "exact": r["subscribers_exact"] == r["subscribers"],
        "lost": r["lost"],
        "truncated_at_s": r.get("truncated_at_s"),
        "profile": spied.result,
        "windows": windows,
    }


class Profile:
    """py-spy sampling a process for PROFILE_S seconds from 1 s after entering: `result` holds
    the top functions by own samples and how busy the GIL was (see `own_samples`), and the CPU
    of the process and of this client over the same seconds ("cpu": the point's own "cpu" spans
    the whole round), or "error". `--nonblocking` reads the process without pausing it;
    py-spy's own CPU (a few % of a core at PROFILE_HZ) is the price of profiling the very round
    whose figures are quoted."""

    def __init__(self, pid: int) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.pid = pid
        self.raw = TMP / f"py-spy-{time.monotonic_ns()}.txt"
        self.command = [py_spy, "record", "--pid", str(pid), "--duration", str(PROFILE_S), "--rate", str(PROFILE_HZ)]
        self.command += ["--format", "raw", "--nonblocking", "--gil", "--output", str(self.raw)]
        self.errors = ""
        self.returncode: int | None = None
        self.cpu: dict[str, float] = {}
        self.result: dict = {}

    def _record(self) -> None:
        with CpuSampler({"api": fixed(self.pid)}) as cpu:
            spy = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.errors = spy.communicate(timeout=PROFILE_S + 60)[1]
        self.returncode = spy.returncode
        self.cpu = cpu.result()

    def __enter__(self) -> Profile:
        self.timer = threading.Timer(1.0, self._record)
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.join()  # py-spy has ended (a round shorter than 1 + PROFILE_S s waits for it)
        if self.returncode != 0 or not self.raw.exists():
            self.result = {"error": f"py-spy failed ({self.returncode}): {self.errors.strip()[:300]}"}
        else:
            self.result = {**own_samples(self.raw.read_text()), "cpu": self.cpu}


def own_samples(collapsed: str, top: int = 10) -> dict:
    """py-spy's raw (collapsed) stacks, "frame;frame;...;leaf count" per line, summed by leaf:
    the functions the samples were in themselves (not their callees). Its --gil samples hold
    only the GIL's holder, so their share of all sampling ticks is how busy the GIL was."""
    leaves: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaf = stack.rsplit(";", 1)[-1]  # "send (asyncio/selector_events.py:1095)"
            leaves[re.sub(r":\d+\)$", ")", leaf)] += int(count)  # one row per function, not per line
    total = sum(leaves.values())
    return {
        "samples": total,
        "gil_busy_share": round(total / (PROFILE_S * PROFILE_HZ), 2),
        "top_own": [{"function": f, "samples": n, "share": round(n / total, 3)} for f, n in leaves.most_common(top)],
    }


def sweep(sizes: list[tuple[int, int]]) -> dict:
    """One server for the whole sweep, warmed up by one small round first: every point then
    meets the same long-running process (imports done, finished logs held within
    STREAM_MEMORY_MB), as production would, and the sweep fits the bench's time budget."""
    started = time.monotonic()
    server = streaming_server(max(tasks for tasks, _ in sizes))
    try:
        if not QUICK:
            measured_round(server, False, tasks=1, viewers=1)  # warm-up: imports, model objects, first crews
        points = []
        for tasks, viewers in sizes:
            points.append(point(server, tasks, viewers))
            print(f"   {tasks} tasks x {viewers} viewers: {summary(points[-1])}", flush=True)
    finally:
        server.stop()
    found = knee(points)
    return {
        "points": points,
        "knee": None if found is None else {"index": found[0], "why": found[1], **knee_point(points[found[0]])},
        "seconds": round(time.monotonic() - started, 1),
    }


def knee_point(p: dict) -> dict:
    """What saturated at the knee: CPU per process, its reading, and where the GIL's time went."""
    keep = ("tasks", "viewers_per_task", "cpu", "saturated", "profile")
    return {key: p[key] for key in keep}


def summary(p: dict) -> str:
    return (
        f"{p['events_per_s']:.0f} ev/s, p50 {p['p50_ms']:.1f} ms, worst window p99 {p['worst_window_p99_ms']:.1f} / "
        f"max {p['max_ms']:.1f} ms, POST p99 {p['api']['post']['p99_ms']:.1f} ms, status p99 "
        f"{p['api']['status']['p99_ms']:.1f} ms ({p['api']['status']['errors']} failed), "
        f"{p['bytes_per_viewer'] / 1024:.0f} KB/viewer, "
        f"exact {p['exact']}, CPU {p['cpu']} -> {p['saturated']}; GIL busy {p['profile'].get('gil_busy_share')}"
    )


def sweep_tasks() -> dict:
    return sweep([(tasks, VIEWERS_PER_TASK) for tasks in TASK_POINTS])


def sweep_viewers() -> dict:
    return sweep([(VIEWER_TASKS, viewers) for viewers in VIEWER_POINTS])


# Idle viewers -------------------------------------------------------------------------------


def idle_capacity() -> tuple[int, str]:
    """How many idle viewers one server (and this client, which holds the other ends) can hold:
    both have this process's RLIMIT_NOFILE (bench/run.py raised the soft limit to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - FD_MARGIN, f"RLIMIT_NOFILE {soft} (hard {hard}) per process, {FD_MARGIN} kept for other fds"


def source_addresses(n: int) -> int:
    """Source addresses (127.0.0.1, .2, ...) needed for n connections to one server port: each
    has only the ephemeral port range's ports."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return max(1, math.ceil(n / (0.9 * (high - low + 1))))


def idle_point(requested: int) -> dict:
    """One fresh server per point: a server that held more viewers before keeps their freed
    memory in its allocator and would count the next point's viewers as nearly free."""
    capacity, why = idle_capacity()
    n = min(requested, capacity)
    sources = source_addresses(n)
    server = start("ours")

    async def cpu_while_idle() -> dict:
        with CpuSampler({"api": fixed(server.proc.pid)}) as cpu:
            await asyncio.sleep(IDLE_CPU_S)
        return {"seconds": IDLE_CPU_S, **cpu.result()}

    try:
        r = asyncio.run(_idle(server, n, sources=sources, while_idle=cpu_while_idle))
    finally:
        server.stop()
    cpu = r.pop("while_idle")
    return {
        "requested": requested,
        **({"capped": why} if n < requested else {}),
        "source_addresses": sources,
        **r,
        "cpu_while_idle": cpu,
    }


def sweep_idle() -> dict:
    started = time.monotonic()
    points = []
    for requested in IDLE_POINTS:
        points.append(idle_point(requested))
        p = points[-1]
        print(
            f"   {p['connections']} idle viewers ({p['connected_ok']} ok, {p['source_addresses']} source "
            f"addresses{', capped: ' + p['capped'] if 'capped' in p else ''}): {p['kb_per_connection']:.2f} KB each, "
            f"server CPU while idle {p['cpu_while_idle']['api']} % of a core",
            flush=True,
        )
    found = idle_knee(points)
    return {
        "points": points,
        "knee": None if found is None else {"index": found[0], "why": found[1]},
        "seconds": round(time.monotonic() - started, 1),
    }


STEPS: list = [("sweep_tasks", sweep_tasks), ("sweep_viewers", sweep_viewers), ("sweep_idle", sweep_idle)]


# Plots ----------------------------------------------------------------------------------------


def draw_sweeps(results: dict, json_path: Path) -> list[Path]:
    """One PNG per sweep in `results`, beside the JSON: docs/benchmarks.sweep-tasks.png, ..."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no sweep plots")
        return []
    drawn = []
    for name, x_key, x_label in (
        ("sweep_tasks", "tasks", f"concurrent tasks ({VIEWERS_PER_TASK} viewers each)"),
        ("sweep_viewers", "viewers_per_task", f"viewers per task ({VIEWER_TASKS} tasks)"),
    ):
        if name in results:
            fig = _streaming_figure(plt, results[name], x_key, x_label)
            drawn.append(_save(fig, json_path, name))
    if "sweep_idle" in results:
        drawn.append(_save(_idle_figure(plt, results["sweep_idle"]), json_path, "sweep_idle"))
    for path in drawn:
        print(f"plot: {path}")
    return drawn


def _save(fig, json_path: Path, name: str) -> Path:
    out = json_path.with_name(f"{json_path.stem}.{name.replace('_', '-')}.png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def _streaming_figure(plt, sweep_result: dict, x_key: str, x_label: str):
    points = sweep_result["points"]
    x = [p[x_key] for p in points]
    fig, axes = plt.subplots(1, 4 if x_key == "viewers_per_task" else 3, figsize=(16, 3.8))
    axes[0].plot(x, [p["events_per_s"] for p in points], "o-")
    axes[0].set_ylabel("delivered events/s")
    for label, values in (
        ("p50", [p["p50_ms"] for p in points]),
        ("worst 1-s window p99", [p["worst_window_p99_ms"] for p in points]),
        ("max", [p["max_ms"] for p in points]),
        ("POST /api/run_task p99", [p["api"]["post"]["p99_ms"] for p in points]),
        ("GET status p99", [p["api"]["status"]["p99_ms"] for p in points]),
    ):
        axes[1].plot(x, values, "o-", label=label)
    axes[1].axhline(P99_TARGET_MS, color="red", linestyle=":", label=f"target p99 {P99_TARGET_MS} ms")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("latency, ms")
    axes[1].legend(fontsize=7)
    for group in ("api", "client", "machine"):
        label = "machine (% of all cores)" if group == "machine" else f"{group} (% of one core)"
        axes[2].plot(x, [p["cpu"].get(group, 0) for p in points], "o-", label=label)
    axes[2].set_ylabel("CPU %")
    axes[2].legend(fontsize=7)
    if x_key == "viewers_per_task":
        axes[3].plot(x, [p["bytes_per_viewer"] / 1024 for p in points], "o-")
        axes[3].set_ylabel("KB received per viewer")
        axes[3].set_ylim(bottom=0)
    knee_at = sweep_result["knee"]
    axes[0].set_yscale("log")
    for ax in axes:
        _point_ticks(ax, x)
        ax.set_xlabel(x_label)
        if knee_at is not None:
            ax.axvline(x[knee_at["index"]], color="grey", linestyle="--")
    fig.suptitle(
        "knee: "
        + (f"at {x[knee_at['index']]} ({knee_at['why']}; {knee_at['saturated']})" if knee_at else "none in the sweep")
        + " (machine CPU counts every process on it)",
        fontsize=9,
    )
    return fig


def _idle_figure(plt, sweep_result: dict):
    points = sweep_result["points"]
    x = [p["connections"] for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    axes[0].plot(x, [p["kb_per_connection"] for p in points], "o-")
    axes[0].axhline(IDLE_TARGET_KB, color="red", linestyle=":", label=f"target {IDLE_TARGET_KB} KB")
    axes[0].set_ylabel("server RSS per idle viewer, KB")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    axes[1].plot(x, [p["cpu_while_idle"]["api"] for p in points], "o-")
    axes[1].set_ylabel(f"server CPU while idle ({IDLE_CPU_S} s), % of a core")
    for ax in axes:
        _point_ticks(ax, x)
        ax.set_xlabel("idle viewers on one process")
    return fig


def _point_ticks(ax, x: list[int]) -> None:
    """A log x axis labelled at the sweep's own points."""
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:,}" for v in x])
    ax.minorticks_off()
    ax.tick_params(labelsize=8)
