"""The a2a-sdk client on our A2A door, for tests: a client built from the server's own card on
the JSON-RPC interface of one protocol version, and the small readers of what it streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.client import Client
from a2a.types.a2a_pb2 import AgentCard, Message, Part, Role, StreamResponse, TaskState
from google.protobuf.json_format import MessageToDict


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
