"""Every view of the crew that the service needs, derived from `agents_config.AGENTS`.

Crews, deliverables, the API's models and the test UI all read the roster from here, so adding,
renaming or reordering an agent is an edit of agents_config.py alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents_config import AGENTS, AgentSpec


class Roster:
    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        if len(agents) < 2:
            raise ValueError(
                "agents_config.AGENTS needs at least two agents: one writes the analysis "
                "the user confirms, the others deliver."
            )
        for attribute in ("name", "role", "deliverable", "filename"):
            values = [getattr(a, attribute) for a in agents]
            if len(set(values)) != len(values):
                raise ValueError(f"agents_config.AGENTS: every agent needs its own {attribute}; got {values}")
        self.agents: tuple[AgentSpec, ...] = tuple(agents)
        self.analyst = self.agents[0]  # writes the analysis the user confirms
        self.delivery = self.agents[1:]
        self.names = [a.name for a in self.agents]
        self.deliverable_keys = [a.deliverable for a in self.agents]
        self.filenames = {a.deliverable: a.filename for a in self.agents}
        self.total_steps = len(self.agents)
        self._by_name = {a.name: a for a in self.agents}
        self._by_role = {a.role: a for a in self.agents}
        self._by_deliverable = {a.deliverable: a for a in self.agents}

    def by_name(self, name: str) -> AgentSpec | None:
        return self._by_name.get(name)

    def by_role(self, role: str) -> AgentSpec | None:
        return self._by_role.get(role)

    def step_of(self, name: str) -> int:
        """1-based position of the agent in the pipeline (0 for names not in the crew)."""
        spec = self._by_name.get(name)
        return self.agents.index(spec) + 1 if spec else 0

    def author_of(self, deliverable: str) -> AgentSpec:
        return self._by_deliverable[deliverable]

    def resolve_deliverable(self, name: str) -> str | None:
        """A deliverable key from its key (`test_plan`) or its file name (`TEST_PLAN.md`)."""
        if name in self._by_deliverable:
            return name
        lowered = name.lower()
        return next((key for key, filename in self.filenames.items() if filename.lower() == lowered), None)

    def public(self) -> dict[str, Any]:
        """What clients (the test UI, API users) need to show the crew."""
        return {
            "agents": [
                {
                    "name": a.name,
                    "role": a.role,
                    "deliverable": a.deliverable,
                    "filename": a.filename,
                    "title": a.title,
                    "tab": a.tab,
                }
                for a in self.agents
            ],
            "total_steps": self.total_steps,
        }


ROSTER = Roster(AGENTS)
