"""A user's CrewEventsHandler subclass, plugged in with EVENTS_HANDLER=tests.support.handlers:Quiet."""

from __future__ import annotations

from crew_factory import CrewEventsHandler
from delivery.events import EventType


class Quiet(CrewEventsHandler):
    """No token events, and each finished document announced in capitals."""

    def on_thought(self, agent_name: str, delta: str) -> None:
        pass

    def on_agent_output(self, agent_name: str, output: str) -> None:
        self.publish(agent_name, EventType.output, f"DONE BY {agent_name.upper()}\n\n{output}")
