"""A peer in `make bench` (issue 27): LangGraph's Agent Server, run locally, on our load.

`langgraph dev` (langgraph-cli[inmem]: langgraph-api on its in-memory runtime) serves
bench/peer_langgraph/graph.py, our crew's shape: four nodes in sequence, each streaming K tokens
through the custom stream writer. It runs from its own virtualenv, .venv-peer (pinned in
requirements-bench-peer.txt, made by `make bench`): its dependencies would move pins of ours. Both
sides are measured in the same section with the same client code (bench/sse_load.py's Subscriber
and de-chunking, bench/run.py's percentiles and per-second windows):

- saturation: 20 runs x 3 viewers, zero delay; delivered events/s, latency, loss and duplicates;
- paced: the same at 100 tokens/s per node (ours: SCRIPTED_TOKEN_DELAY_MS=10);
- time to first event after the POST that starts a run;
- memory per idle viewer: 1,000 viewers on a run that waits.

The peer's viewers join a run's stream (GET /threads/{id}/runs/{run}/stream, stream_mode=custom)
with Last-Event-ID 0, so that each gets the whole run from its first token, as ours get theirs
from sequence 1: LangGraph replays only runs created with stream_resumable=true, from memory.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from bench import run
from bench.sse_load import TERMINAL, Dechunker, Subscriber, subscribe
from tests.support.server_process import free_port, terminate

PEER_VENV = run.ROOT / ".venv-peer"
GRAPH_DIR = run.BENCH / "peer_langgraph"
NODES = 4
PACED_RATE = 100.0  # tokens/s per agent: SCRIPTED_TOKEN_DELAY_MS=10 on our side
IDLE_VIEWERS = 1000
# bench/run.py's requirement (its task number 0): the scripted documents' length depends on it
REQUIREMENT = "Build app number 0 with login, search, payments and reports"
# One warm-up round before the measured ones, as bench/run.py's throughput; in a quick run
# (BENCH_QUICK=1) none before the paced rounds, which last >= 21 s each (2,051 tokens at 100/s).
WARM_UP_PACED = not run.QUICK
# A viewer whose connection dropped comes back this much later (a browser's EventSource waits
# its `retry`, ~3 s by default): by then the run has gone on, so it resumes from the replay.
RECONNECT_S = 0.5
# No network: no telemetry, no version check, no tracing, no keys. (At log level info the server
# says "No license key or control plane API key set, skipping metadata loop".)
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}


# The peer's server --------------------------------------------------------------------------


class PeerServer:
    """`langgraph dev` on a free port, without its reloader (one process serves and runs the
    graphs: the one whose memory is measured), as many concurrent runs as our MAX_CONCURRENT_TASKS."""

    def __init__(self) -> None:
        langgraph = PEER_VENV / "bin" / "langgraph"
        if not langgraph.exists():
            raise RuntimeError(
                f"{langgraph} is missing: `make bench` creates it, or by hand: python3 -m venv .venv-peer && "
                ".venv-peer/bin/pip install -r requirements-bench-peer.txt"
            )
        # Its own copy of the graph folder: the dev server writes its state (.langgraph_api/) there.
        self.folder = run.TMP / f"peer-{time.monotonic_ns()}"
        shutil.copytree(GRAPH_DIR, self.folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "OPENAI_"))}
        env.update(OFFLINE_ENV)
        env.pop("VIRTUAL_ENV", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # --allow-blocking: no BlockBuster, a dev-only checker of blocking calls in async code that
        # wraps functions on the I/O path; LangGraph's production servers run without it (and
        # this graph never blocks). So the peer is measured at its best.
        command = [str(langgraph), "dev", "--no-browser", "--no-reload", "--allow-blocking", "--port", str(self.port)]
        command += ["--n-jobs-per-worker", str(run.TASKS), "--server-log-level", "warning"]  # as our LOG_LEVEL
        self.proc = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"langgraph dev exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/ok", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"langgraph dev not ready in 120 s:\n{self.log_path.read_text()[-3000:]}")

    def rss_kb(self) -> int:
        """The server's process tree (with --no-reload it is one process; children would count)."""
        return sum(run.rss_kb(pid) for pid in process_tree(self.proc.pid))

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def versions() -> dict:
    freeze = subprocess.run(
        [str(PEER_VENV / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    wanted = ("langgraph", "langgraph-api", "langgraph-cli", "langgraph-runtime-inmem", "langgraph-checkpoint")
    pins = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    return {name: pins.get(name) for name in wanted}


async def start_run(client: httpx.AsyncClient, rate: float, tokens: int, hold_s: float = 0) -> tuple[str, str]:
    """One POST, as ours: it creates the thread too (if_not_exists), and the run is resumable so
    that a viewer may join from its first token."""
    thread_id = str(uuid.uuid4())
    answer = await client.post(
        f"/threads/{thread_id}/runs",
        json={
            "assistant_id": "crew",
            "input": {"tokens": tokens, "rate": rate, "hold_s": hold_s},
            "stream_mode": ["custom"],
            "stream_resumable": True,
            "if_not_exists": "create",
        },
    )
    answer.raise_for_status()
    return thread_id, answer.json()["run_id"]


def stream_request(path: str, last_event_id: str | None) -> bytes:
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
    return f"GET {path} HTTP/1.0\r\nHost: bench\r\n{resume}\r\n".encode()


def join_path(thread_id: str, run_id: str) -> str:
    return f"/threads/{thread_id}/runs/{run_id}/stream?stream_mode=custom"


async def view(
    port: int,
    thread_id: str,
    run_id: str,
    sub: Subscriber,
    *,
    first_only: bool = False,
    last_event_id: str = "0",
    until: int | None = None,
) -> str | None:
    """bench/sse_load.py's `subscribe`, for the peer's frames (`event: custom`, `data: {...}`,
    `id:` last): `sequences` are the tokens' own indexes, latency counts from the token's emit
    time (or from this request, for a token emitted before it), `terminal` is the stream's end
    (the server ends a joined stream when the run ends; it sends no end event). `until`: leave
    once `sub` holds that many tokens, as a viewer whose connection drops. Returns the last
    event id seen (what a browser's EventSource would resume from)."""
    requested_at = time.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(stream_request(join_path(thread_id, run_id), last_event_id))
    buffer, head = b"", b""
    body: Dechunker | None = None
    last_id = None
    try:
        while True:
            chunk = await reader.read(262144)
            if not chunk:
                sub.terminal = sub.status == 200
                return last_id
            now = time.time()
            if body is None:
                head += chunk
                headers, sep, chunk = head.partition(b"\r\n\r\n")
                if not sep:
                    continue
                sub.status = int(headers.split(b" ", 2)[1])
                body = Dechunker()  # uvicorn answers chunked, as for ours
            buffer += body.feed(chunk).replace(b"\r\n", b"\n")
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if not block.startswith(b"event: custom\n"):
                    continue  # heartbeat comments
                i = block.index(b'"i":') + 4
                t = block.index(b'"t":') + 4
                sub.sequences.append(int(block[i : block.index(b",", i)]))
                sub.latencies.append(now - max(float(block[t : block.index(b",", t)]), requested_at))
                sub.received.append(now)
                sub.thoughts += 1
                at = block.rfind(b"\nid: ")
                last_id = block[at + 5 :].decode() if at >= 0 else last_id
                if sub.first_event_at is None:
                    sub.first_event_at = now
                    if first_only:
                        return last_id
                sub.last_event_at = now
                if until is not None and len(sub.sequences) >= until:
                    return last_id
    finally:
        writer.close()


def peer_round(server: PeerServer, rate: float, tokens: int) -> dict:
    """bench/run.py's measured_round for the peer (the client's collector off, likewise)."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_peer_round(server, rate, tokens))
    finally:
        gc.enable()


async def _peer_round(server: PeerServer, rate: float, tokens: int) -> dict:
    expected = tokens * NODES
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        t0 = time.time()
        runs = await asyncio.gather(*(start_run(client, rate, tokens) for _ in range(run.TASKS)))
        viewers = [(thread_id, run_id, Subscriber(run_id)) for thread_id, run_id in runs for _ in range(run.SUBS)]
        subs = [sub for _, _, sub in viewers]
        readers = [view(server.port, thread_id, run_id, sub) for thread_id, run_id, sub in viewers]
        await asyncio.wait_for(asyncio.gather(*readers), timeout=600)
    delivered = sum(len(s.sequences) for s in subs)
    last = max(s.last_event_at or t0 for s in subs)
    latencies = [x for s in subs for x in s.latencies]
    windows = run.latency_windows(subs, t0)
    wanted = list(range(1, expected + 1))
    return {
        "delivered": delivered,
        "seconds": last - t0,
        "events_per_s": delivered / (last - t0),
        "p50_ms": run.pct(latencies, 0.5) * 1000,
        "p99_ms": run.pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "worst_window_p99_ms": max((w["p99_ms"] for w in windows), default=float("nan")),
        "windows": windows,
        "subscribers_exact": sum(s.sequences == wanted for s in subs),
        "subscribers": len(subs),
        "lost": sum(len(set(wanted) - set(s.sequences)) for s in subs),
        "duplicated": sum(len(s.sequences) - len(set(s.sequences)) for s in subs),
        "streams_ended": sum(s.terminal for s in subs),
    }


def peer_throughput(rate: float, tokens: int) -> dict:
    server = PeerServer()
    try:
        if WARM_UP_PACED or not rate:
            peer_round(server, rate, tokens)
        rounds = [peer_round(server, rate, tokens) for _ in range(run.ROUNDS)]
    finally:
        server.stop()
    median = run.median_round(rounds)
    median["duplicated_total"] = sum(r["duplicated"] for r in rounds)
    return median


async def _peer_ttfe(server: PeerServer, tokens: int) -> list[float]:
    """bench/run.py's _ttfe: POST, GET the stream at once, time to the first token; one run at a
    time (each cancelled after its first token, the next POSTed once it has ended)."""
    out = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        for n in range(run.TTFE_N + 3):
            t0 = time.time()
            # unpaced, as ours in this figure: its first token is not held back by a model's pace
            thread_id, run_id = await start_run(client, 0, tokens)
            sub = Subscriber(run_id)
            await view(server.port, thread_id, run_id, sub, first_only=True)
            if n >= 3 and sub.first_event_at is not None:
                out.append(sub.first_event_at - t0)
            await client.post(f"/threads/{thread_id}/runs/{run_id}/cancel")
            while (await client.get(f"/threads/{thread_id}/runs/{run_id}")).json()["status"] in ("pending", "running"):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
    return out


async def hold(port: int, thread_id: str, run_id: str, connected: asyncio.Event, release: asyncio.Event) -> bool:
    """bench/sse_load.py's hold_idle for the peer: join at the live tail (no Last-Event-ID, nothing
    replayed), read the headers, hold the connection until released."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(stream_request(join_path(thread_id, run_id), None))
    ok = (await reader.read(4096)).startswith(b"HTTP/1.1 200")
    connected.set()
    await release.wait()
    writer.close()
    return ok


async def _peer_idle(server: PeerServer, n: int) -> dict:
    """bench/run.py's _idle for the peer: the run streams one token, then its first node waits
    (ours: a task waiting for confirmation). The peer has no count of a run's viewers (ours:
    /api/streams), so "all subscribed" is every viewer's 200, then the same 2 s."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        thread_id, run_id = await start_run(client, 0, tokens=1, hold_s=3600)
        first = Subscriber(run_id)
        await view(server.port, thread_id, run_id, first, first_only=True)
        assert first.first_event_at is not None, "the idle run streamed nothing"
        release = asyncio.Event()
        warm = asyncio.Event()
        one_viewer = asyncio.create_task(hold(server.port, thread_id, run_id, warm, release))
        await warm.wait()
        await asyncio.sleep(1.0)
        before = server.rss_kb()
        gate = asyncio.Semaphore(200)
        connected = [asyncio.Event() for _ in range(n)]

        async def one(k: int) -> bool:
            async with gate:
                task = asyncio.create_task(hold(server.port, thread_id, run_id, connected[k], release))
                await connected[k].wait()
            return await task

        holders = [asyncio.create_task(one(k)) for k in range(n)]
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), timeout=300)
        await asyncio.sleep(2.0)
        after = server.rss_kb()
        release.set()
        ok = sum(await asyncio.gather(*holders)) + await one_viewer
        await client.post(f"/threads/{thread_id}/runs/{run_id}/cancel")
    return {
        "connections": n,
        "connected_ok": ok - 1,
        "processes": len(process_tree(server.proc.pid)),
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_connection": (after - before) / n,
    }


def peer_ttfe(tokens: int) -> dict:
    server = PeerServer()
    try:
        samples = asyncio.run(_peer_ttfe(server, tokens))
    finally:
        server.stop()
    return {"median_ms": statistics.median(samples) * 1000, "p90_ms": run.pct(samples, 0.9) * 1000, "n": len(samples)}


def peer_idle() -> dict:
    server = PeerServer()
    try:
        return asyncio.run(_peer_idle(server, IDLE_VIEWERS))
    finally:
        server.stop()


def our_idle() -> dict:
    """bench/run.py's idle with the peer's number of viewers."""
    server = run.start("ours")
    try:
        return asyncio.run(run._idle(server, IDLE_VIEWERS))
    finally:
        server.stop()


async def our_view(
    port: int, task_id: str, sub: Subscriber, last_event_id: str | None, until: int | None
) -> str | None:
    """A viewer of ours, as bench/sse_load.py's `subscribe` but resuming from `last_event_id` and
    leaving after `until` events; returns the last event id seen."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(stream_request(f"/api/stream/{task_id}", last_event_id))
    buffer, head = b"", b""
    body: Dechunker | None = None
    last_id = last_event_id
    try:
        while chunk := await reader.read(262144):
            if body is None:
                head += chunk
                _headers, sep, chunk = head.partition(b"\r\n\r\n")
                if not sep:
                    continue
                body = Dechunker()
            buffer += body.feed(chunk).replace(b"\r\n", b"\n")
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if not block.startswith(b"id: "):
                    continue
                last_id = block[4 : block.index(b"\n")].decode()
                sub.sequences.append(int(last_id))
                if any(end in block for end in TERMINAL):
                    sub.terminal = True
                    return last_id
                if until is not None and len(sub.sequences) >= until:
                    return last_id
        return last_id
    finally:
        writer.close()


def resumed(subs: list[Subscriber], expected: dict[str, int]) -> dict:
    """What the viewers that came back lost or got twice, over all of them."""
    lost = dup = 0
    for sub in subs:
        lost += len(set(range(1, expected[sub.task_id] + 1)) - set(sub.sequences))
        dup += len(sub.sequences) - len(set(sub.sequences))
    return {
        "viewers": len(subs),
        "viewers_exact": sum(resumed_exact(s, expected) for s in subs),
        "lost": lost,
        "duplicated": dup,
    }


def resumed_exact(sub: Subscriber, expected: dict[str, int]) -> bool:
    return sub.sequences == list(range(1, expected[sub.task_id] + 1))


async def _our_resume(server: run.Server, cuts: list[int]) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        posts = [
            client.post("/api/run_task", json={"user_requirement": REQUIREMENT, "skip_confirmation": True})
            for _ in range(run.TASKS)
        ]
        task_ids = [answer.json()["task_id"] for answer in await asyncio.gather(*posts)]
        subs = [Subscriber(task_id) for task_id in task_ids for _ in cuts]

        async def drop_and_resume(sub: Subscriber, cut: int) -> None:
            last = await our_view(server.port, sub.task_id, sub, None, until=cut)
            await asyncio.sleep(RECONNECT_S)
            await our_view(server.port, sub.task_id, sub, last, until=None)

        await asyncio.wait_for(
            asyncio.gather(*(drop_and_resume(sub, cuts[n % len(cuts)]) for n, sub in enumerate(subs))), timeout=600
        )
        expected = {
            task_id: (await client.get(f"/api/task/{task_id}/status")).json()["last_sequence"] for task_id in task_ids
        }
    return resumed(subs, expected)


async def _peer_resume(server: PeerServer, tokens: int, cuts: list[int]) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        runs = await asyncio.gather(*(start_run(client, 0, tokens) for _ in range(run.TASKS)))
    viewers = [(thread_id, Subscriber(run_id)) for thread_id, run_id in runs for _ in cuts]

    async def drop_and_resume(thread_id: str, sub: Subscriber, cut: int) -> None:
        last = await view(server.port, thread_id, sub.task_id, sub, until=cut)
        assert last is not None, "the peer sent no event id: is the run resumable?"
        await asyncio.sleep(RECONNECT_S)
        await view(server.port, thread_id, sub.task_id, sub, last_event_id=last)

    await asyncio.wait_for(
        asyncio.gather(*(drop_and_resume(t, sub, cuts[n % len(cuts)]) for n, (t, sub) in enumerate(viewers))),
        timeout=600,
    )
    return resumed([sub for _, sub in viewers], {sub.task_id: tokens * NODES for _, sub in viewers})


def drop_points(tokens: int) -> list[int]:
    """Where the viewers' connections drop in `resume`: after 1/4, 1/2 and 3/4 of a run."""
    return [tokens * NODES * k // 4 for k in (1, 2, 3)]


def our_resume(tokens: int) -> dict:
    """(1)'s unpaced load once more, but every viewer's connection drops once (a third of them
    after 1/4 of the run, a third after 1/2, a third after 3/4) and comes back RECONNECT_S later
    with the last event id it saw, as a browser's EventSource does: what the viewers then lost or
    got twice. (At saturation viewers lag behind the producers, so they resume from the replay.)"""
    server = run.start("ours", max_concurrent_tasks=run.TASKS)
    try:
        return asyncio.run(_our_resume(server, drop_points(tokens)))
    finally:
        server.stop()


def peer_resume(tokens: int) -> dict:
    """our_resume on the peer."""
    server = PeerServer()
    try:
        return asyncio.run(_peer_resume(server, tokens, drop_points(tokens)))
    finally:
        server.stop()


async def _our_tokens(server: run.Server) -> int:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        answer = await client.post(
            "/api/run_task",
            json={"user_requirement": REQUIREMENT, "skip_confirmation": True},
        )
        sub = await subscribe("127.0.0.1", server.port, Subscriber(answer.json()["task_id"]))
    assert sub.terminal, "our crew did not finish"
    return sub.thoughts


def our_tokens_per_run() -> int:
    """How many token (`thought`) events one scripted crew streams on our side: the peer's four
    nodes stream as many between them, so that both sides carry the same tokens per run."""
    server = run.start("ours")
    try:
        return asyncio.run(_our_tokens(server))
    finally:
        server.stop()


def our_throughput(**env) -> dict:
    """bench/run.py's throughput of our service, without its warm-up round if paced in a quick run."""
    if WARM_UP_PACED or not env:
        return run.throughput("ours", False, **env)
    server = run.start("ours", max_concurrent_tasks=run.TASKS, **env)
    try:
        return run.median_round([run.measured_round(server, False) for _ in range(run.ROUNDS)])
    finally:
        server.stop()


def timed(parts: dict) -> dict:
    """Run each part (name -> step), and say how long the whole took."""
    started = time.monotonic()
    out = {name: step() for name, step in parts.items()}
    return out | {"seconds": round(time.monotonic() - started)}


def section() -> dict:
    run.raise_fd_limit()
    our_tokens = our_tokens_per_run()
    tokens = round(our_tokens / NODES)
    ours = timed(
        {
            "saturation": our_throughput,
            "paced_100tps": lambda: our_throughput(scripted_token_delay_ms=10),
            "ttfe": lambda: run.ttfe("ours"),
            "idle": our_idle,
            "resume": lambda: our_resume(tokens),
        }
    )
    peer = timed(
        {
            "saturation": lambda: peer_throughput(0, tokens),
            "paced_100tps": lambda: peer_throughput(PACED_RATE, tokens),
            "ttfe": lambda: peer_ttfe(tokens),
            "idle": peer_idle,
            "resume": lambda: peer_resume(tokens),
        }
    )
    result = {
        "peer": {
            "what": "langgraph dev (langgraph-api, in-memory runtime) serving bench/peer_langgraph",
            "versions": versions(),
            "our_tokens_per_run": our_tokens,
            "peer_tokens_per_node": tokens,
        },
        "ours": ours,
        "langgraph_inmem": peer,
        "ratios": ratios(ours, peer),
    }
    print_table(result)
    return result


# (figure, where in a side's result, True if higher is better)
FIGURES = [
    ("saturation delivered events/s", ("saturation", "events_per_s"), True),
    ("saturation p99 ms", ("saturation", "p99_ms"), False),
    ("paced 100 tok/s p50 ms", ("paced_100tps", "p50_ms"), False),
    ("paced 100 tok/s p99 ms", ("paced_100tps", "p99_ms"), False),
    ("paced 100 tok/s max ms", ("paced_100tps", "max_ms"), False),
    ("time to first event, median ms", ("ttfe", "median_ms"), False),
    ("idle viewer KB", ("idle", "kb_per_connection"), False),
]


def ratios(ours: dict, peer: dict) -> dict:
    """How many times better ours is (> 1: ours ahead), whichever way a figure improves."""
    out = {}
    for name, (part, key), higher_better in FIGURES:
        a, b = ours[part][key], peer[part][key]
        out[name] = (a / b if higher_better else b / a) if a and b else float("nan")
    return out


def print_table(result: dict) -> None:
    ours, peer = result["ours"], result["langgraph_inmem"]
    print(f"{'figure':34} {'ours':>12} {'langgraph dev':>14} {'ours ahead':>10}")
    for name, (part, key), _ in FIGURES:
        print(f"{name:34} {ours[part][key]:12.1f} {peer[part][key]:14.1f} {result['ratios'][name]:9.2f}x")
    for part in ("saturation", "paced_100tps"):
        print(
            f"{part}: ours exact {ours[part]['all_exact']}, lost {ours[part]['lost_total']}; "
            f"langgraph exact {peer[part]['all_exact']}, lost {peer[part]['lost_total']}, "
            f"duplicated {peer[part]['duplicated_total']}"
        )
    print(f"viewers resuming with Last-Event-ID: ours {ours['resume']}; langgraph {peer['resume']}")
    print(f"seconds: ours {ours['seconds']}, langgraph {peer['seconds']}")


STEPS: list = [("peer", section)]
