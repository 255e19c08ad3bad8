"""The MCP and A2A doors on two replicas sharing Redis and PostgreSQL. MCP: run_delivery on one
follows its task's log through the Redis backend with its progress, while the other answers
get_delivery and serves the documents and the package of the same task; stateless, so no session
to lose. A2A: a subscription on one replica cut mid-run and resumed on the other loses nothing
and repeats nothing."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.types import BlobResourceContents, TextResourceContents
from pydantic import AnyUrl

from delivery.crew.roster import ROSTER
from tests.support.a2a_client import assert_resumed_exactly, follow_across_a_cut
from tests.support.api import run_task, stream_until
from tests.support.mcp_client import call, session
from tests.support.replicas import two_replicas
from tests.support.server_process import Server
from tests.support.tcp_proxy import CuttableProxy


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    folder: Path = tmp_path_factory.mktemp("doors-replicas")
    with two_replicas(folder, SCRIPTED_TOKEN_DELAY_MS="5", MCP_PROGRESS_INTERVAL_S="1") as (a, b, _redis):
        yield a, b


def test_run_delivery_on_one_replica_is_watched_and_read_on_the_other(replicas):
    a, b = replicas
    messages: list[str] = []
    seen_on_b: list[dict[str, Any]] = []

    async def scenario() -> tuple[dict[str, Any], bytes, bytes]:
        async with session(a.url) as on_a, session(b.url) as on_b:

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                messages.append(message or "")

            run = asyncio.create_task(
                on_a.call_tool("run_delivery", {"requirement": "Build a parking app"}, progress_callback=progress)
            )
            while not run.done():  # B sees the task A runs, mid-run
                listed = (await call(on_b, "list_deliveries", status="running", limit=5))["tasks"]
                if listed:
                    seen_on_b.append(await call(on_b, "get_delivery", task_id=listed[0]["task_id"]))
                await asyncio.sleep(0.5)
            result = await run
            assert not result.isError, result.content
            state = result.structuredContent
            assert state is not None
            task_id = state["task_id"]
            packages = []
            for client in (on_a, on_b):
                read = await client.read_resource(AnyUrl(f"delivery://{task_id}/package"))
                blob = read.contents[0]
                assert isinstance(blob, BlobResourceContents)
                packages.append(blob.blob.encode())
            for key, document in state["documents"].items():
                text = (await on_b.read_resource(AnyUrl(f"delivery://{task_id}/{key}"))).contents[0]
                assert isinstance(text, TextResourceContents) and text.text == document
            return state, packages[0], packages[1]

    state, from_a, from_b = asyncio.run(scenario())
    assert state["status"] == "succeeded" and set(state["documents"]) == set(ROSTER.deliverable_keys)
    assert any(seen["task_id"] == state["task_id"] and seen["status"] == "running" for seen in seen_on_b)
    for name in ROSTER.names:
        assert any(m.startswith(f"{name} is working") for m in messages), (name, messages)
    with (
        zipfile.ZipFile(io.BytesIO(base64.b64decode(from_a))) as za,
        zipfile.ZipFile(io.BytesIO(base64.b64decode(from_b))) as zb,
    ):
        assert sorted(za.namelist()) == sorted(zb.namelist())
        assert za.read("events.jsonl") == zb.read("events.jsonl")


def test_an_a2a_subscription_cut_on_one_replica_resumes_on_the_other_exactly(replicas):
    """Followed on A through a proxy that drops the connection after the first document, then
    subscribed again on B: B's Task holds the log up to its `sequence`, and its updates are
    exactly the mapped events after it, once each — Redis carries the log between them."""
    a, b = replicas
    proxy = CuttableProxy(a.port)
    try:
        with httpx.Client(base_url=b.url, timeout=30) as http:
            task_id = run_task(http, "Build a chess club site")  # started on B, followed from A
        before, after = follow_across_a_cut(task_id, proxy, b.url)
    finally:
        proxy.close()
    assert_resumed_exactly(before, after, stream_until(a.url, task_id, "end").events)
