"""The peer's graph (bench/peer.py): our crew's shape in LangGraph, run by its own Agent Server.

Four nodes in sequence, named after our agents, each streaming `tokens` tokens through the custom
stream writer (stream mode "custom"), `rate` tokens/s (0: as fast as the server takes them). Every
token carries its index over the whole run (1, 2, ...) and its emit time, so the client can check
loss and duplication and measure latency from the token's own timestamp, as it does on our side.
`hold_s` > 0 makes the first node wait that long after its first token: a run with idle viewers.

Loaded by `langgraph dev` in the peer's own virtualenv (.venv-peer), not by our service.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

AGENTS = ("ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator")


class Job(TypedDict, total=False):
    tokens: int  # per node
    rate: float  # tokens/s per node; 0 = unpaced
    hold_s: float
    emitted: int  # tokens emitted so far in this run (the next node numbers on from here)


def agent(name: str, first: bool):
    async def node(job: Job) -> Job:
        write = get_stream_writer()
        tokens, rate, start = job["tokens"], job.get("rate", 0.0), job.get("emitted", 0)
        delay = 1.0 / rate if rate else 0.0
        for n in range(1, tokens + 1):
            # Like our scripted model (delivery/llm/scripted.py): wait, then emit. An async node is
            # this server's idiomatic model call; sleep(0) when unpaced lets the 20 runs and the
            # viewers share the event loop instead of one run emitting its whole node at once.
            await asyncio.sleep(delay)
            write({"agent": name, "i": start + n, "t": time.time(), "token": "tok "})
            if first and n == 1 and job.get("hold_s"):
                await asyncio.sleep(job["hold_s"])
        return {"emitted": start + tokens}

    node.__name__ = name
    return node


def build():
    graph = StateGraph(Job)
    previous = START
    for index, name in enumerate(AGENTS):
        graph.add_node(name, agent(name, index == 0))
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile()


crew = build()
