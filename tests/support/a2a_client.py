"""The a2a-sdk client on our A2A door, for tests: a client built from the server's own card on
the JSON-RPC interface of one protocol version, the small readers of what it streams, and a
subscription followed across a dropped connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.client import Client
from a2a.types.a2a_pb2 import AgentCard, Message, Part, Role, StreamResponse, SubscribeToTaskRequest, TaskState
from google.protobuf.json_format import MessageToDict

from delivery.crew.roster import ROSTER
from tests.support.tcp_proxy import CuttableProxy


@asynccontextmanager
async def a2a_client(
    url: str, version: str = "1.0", key: str | None = None, streaming: bool = True
) -> AsyncIterator[Client]:
    """A client built from the server's own card, on its JSON-RPC interface of `version`."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=60, headers=headers) as http:
        card = AgentCard()
        card.CopyFrom(await agent_card(http, url))
        chosen = [
            i for i in card.supported_interfaces if i.protocol_version == version and i.protocol_binding == "JSONRPC"
        ]
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(chosen)
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=streaming)).create(card)
        try:
            yield client
        finally:
            await client.close()


async def agent_card(http: httpx.AsyncClient, url: str) -> AgentCard:
    return await A2ACardResolver(http, url).get_agent_card()


def message(text: str, task_id: str = "", **metadata: Any) -> Message:
    """A user message; `metadata` such as skip_confirmation=True goes with it."""
    built = Message(message_id="m-1", role=Role.ROLE_USER, parts=[Part(text=text)], task_id=task_id)
    if metadata:
        built.metadata.update(metadata)
    return built


async def collect(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    return [event async for event in stream]


def states(events: list[StreamResponse]) -> list[str]:
    return [TaskState.Name(e.status_update.status.state) for e in events if e.HasField("status_update")]


def artifacts(events: list[StreamResponse]) -> dict[str, str]:
    return {
        e.artifact_update.artifact.artifact_id: e.artifact_update.artifact.parts[0].text
        for e in events
        if e.HasField("artifact_update")
    }


def update_metadata(event: StreamResponse) -> dict[str, Any]:
    update = event.status_update if event.HasField("status_update") else event.artifact_update
    return MessageToDict(update.metadata)


# The events of our log that make an A2A update (token events are not mapped).
MAPPED_EVENTS = {
    "start",
    "agent_start",
    "output",
    "awaiting_confirmation",
    "confirmed",
    "resumed",
    "end",
    "error",
    "cancelled",
}


def follow_across_a_cut(
    task_id: str, proxy: CuttableProxy, resume_url: str
) -> tuple[list[StreamResponse], list[StreamResponse]]:
    """Subscribe to the task through `proxy`, cut the connection once its first document has come,
    then subscribe again at `resume_url` (the same server through the proxy, or another replica):
    what each subscription got."""

    async def first() -> list[StreamResponse]:
        got: list[StreamResponse] = []
        async with a2a_client(proxy.url) as client:
            try:
                async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                    got.append(event)
                    if len(artifacts(got)) == 1:
                        proxy.cut()
            except Exception:  # noqa: BLE001 - whatever the client makes of a cut
                return got
        raise AssertionError(f"the subscription to {task_id} ended before it was cut")

    async def second() -> list[StreamResponse]:
        async with a2a_client(resume_url) as client:
            return await collect(client.subscribe(SubscribeToTaskRequest(id=task_id)))

    before = asyncio.run(first())
    return before, asyncio.run(second())


def assert_resumed_exactly(
    before: list[StreamResponse], after: list[StreamResponse], log: list[dict[str, Any]]
) -> None:
    """The second subscription's Task holds the log up to its `sequence`, and its updates are
    exactly the mapped events of `log` after it, once each; with the snapshot's documents they
    are the four, and the task completed."""
    assert before[0].HasField("task") and after[0].HasField("task")
    snapshot = after[0].task
    resumed_at = int(MessageToDict(snapshot.metadata)["sequence"])
    # The reviewer's document completed by the crew (its traceability matrix) comes again before
    # the final status, marked `final`: not an event of the log.
    later = [e for e in after[1:] if not update_metadata(e).get("final")]
    expected = [e["sequence"] for e in log if e["event_type"] in MAPPED_EVENTS and e["sequence"] > resumed_at]
    assert [int(update_metadata(e)["sequence"]) for e in later] == expected  # nothing lost, nothing twice
    assert resumed_at >= max(int(update_metadata(e)["sequence"]) for e in before if e.HasField("artifact_update"))
    names = [a.artifact_id for a in snapshot.artifacts]
    names += [e.artifact_update.artifact.artifact_id for e in later if e.HasField("artifact_update")]
    assert sorted(names) == sorted(ROSTER.deliverable_keys)
    assert states(after)[-1] == "TASK_STATE_COMPLETED"
