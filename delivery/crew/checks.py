"""The code's check of each document as its agent finishes it, and the fix loop.

Each agent's task gets a CrewAI guardrail (the framework's own mechanism for validating a task's
output): it parses the document (delivery/documents/structure.py), keeps it as a version, and
tells viewers the result (a `check` event). When the check finds gaps, the guardrail hands the
exact list back and CrewAI has the same agent rewrite the document; after MAX_FIX_ROUNDS rewrites
the document is accepted as it is, its gaps stay on record, and the verdict will be NO-GO.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents_config import AgentSpec
from delivery.crew.compat import Guardrail, as_guardrail
from delivery.documents.structure import ANALYSIS, REVIEW, check, requirement_ids
from delivery.documents.traceability import DOCUMENT_NAMES
from delivery.events import carriable
from delivery.tasks.records import DocumentVersion, TaskRecord

if TYPE_CHECKING:
    from crew_factory import CrewEventsHandler

SaveVersion = Callable[[DocumentVersion], int]

_SHAPES = {
    "requirements_analysis": "### REQ-n: <title>, a line describing it, \"Acceptance criteria:\" and \"- \" items",
    "test_plan": "### TC-n: <title>, \"Verifies: REQ-a\", \"Steps:\" with numbered steps, \"Expected: <result>\"",
    "technical_design": "### C-n: <name> (or another ID-n), \"Serves: REQ-a\"",
    "delivery_review": "## Findings with \"- \" items, ## Risks with \"- \" items, and a last line \"Verdict: GO\" "
    "or \"Verdict: NO-GO\"",
}


@dataclass
class CheckResult:
    """What one check of one document found."""

    agent: str
    deliverable: str
    version: int
    fix_round: int  # 0: the agent's first draft in this phase; n: its n-th rewrite
    max_fix_rounds: int
    gaps: list[str]
    accepted: bool  # no gap, or no fix round left

    @property
    def passed(self) -> bool:
        return not self.gaps

    def summary(self) -> str:
        name = DOCUMENT_NAMES.get(self.deliverable, self.deliverable)
        listing = "".join(f"\n- {gap}" for gap in self.gaps)
        if self.passed:
            return f"The {name} is complete: the check found no gap."
        if self.accepted:
            return (
                f"The {name} still has {len(self.gaps)} gap(s) after {self.max_fix_rounds} fix round(s); they stay "
                f"on record and the verdict will be NO-GO:{listing}"
            )
        return (
            f"The {name} has {len(self.gaps)} gap(s); {self.agent} rewrites it (fix round {self.fix_round + 1} "
            f"of {self.max_fix_rounds}):{listing}"
        )


class DocumentChecks:
    """The checks of one phase: a guardrail per agent's task, with its own count of fix rounds."""

    def __init__(
        self,
        record: TaskRecord,
        handler: CrewEventsHandler,
        max_fix_rounds: int,
        save_version: SaveVersion,
        first_reason: str = "first draft",
    ) -> None:
        """`first_reason`: why this phase writes its documents (a first draft, or a revision round
        the user asked for)."""
        self._record = record
        self._handler = handler
        self.max_fix_rounds = max_fix_rounds
        self._save_version = save_version
        self._first_reason = first_reason
        self._rounds: dict[str, int] = {}
        self.results: list[CheckResult] = []

    def guardrail(self, spec: AgentSpec) -> Guardrail:
        def check_document(output: Any) -> tuple[bool, Any]:
            # Model text is stored as a version and replaces the task's output: made carriable first.
            return self._check(spec, carriable(output.raw))

        return as_guardrail(check_document)

    def _check(self, spec: AgentSpec, text: str) -> tuple[bool, Any]:
        deliverable = spec.deliverable
        fix_round = self._rounds.get(deliverable, 0)
        requirements = (
            [] if deliverable in (ANALYSIS, REVIEW) else requirement_ids(self._record.deliverables.get(ANALYSIS, ""))
        )
        gaps = check(deliverable, text, requirements)
        reason = self._first_reason if fix_round == 0 else f"fix round {fix_round}"
        version = self._save_version(
            DocumentVersion(
                task_id=self._record.task_id,
                deliverable=deliverable,
                agent=spec.name,
                created_at=time.time(),
                reason=reason,
                gaps=gaps,
                content=text,
            )
        )
        accepted = not gaps or fix_round >= self.max_fix_rounds
        result = CheckResult(spec.name, deliverable, version, fix_round, self.max_fix_rounds, gaps, accepted)
        self.results.append(result)
        self._handler.on_check(spec.name, result)
        if accepted:
            return True, text
        self._rounds[deliverable] = fix_round + 1
        return False, self.feedback(deliverable, gaps)

    @staticmethod
    def feedback(deliverable: str, gaps: list[str]) -> str:
        """What the agent is told: the exact gaps, and the shape to keep."""
        name = DOCUMENT_NAMES.get(deliverable, deliverable)
        return (
            f"The code's check found these gaps in your {name}:\n"
            + "".join(f"- {gap}\n" for gap in gaps)
            + f"Rewrite the whole {name}, fixing every gap, in this shape: {_SHAPES.get(deliverable, '')}."
        )
