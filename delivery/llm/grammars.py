"""The local model's documents: a short brief, and a llama.cpp grammar (GBNF) that holds it to
each document's shape.

A 135M model cannot be trusted to number requirements or to cite only those that exist, so its
output is constrained token by token: the analysis has 3-5 numbered requirements, each with
acceptance criteria; the test plan has one test case per requirement of the approved analysis
(literally "Verifies: REQ-n", so nothing is left uncovered and nothing unknown is named); the
design has one component per requirement ("Serves: REQ-n"); the review has findings, risks and a
verdict line. Within that frame the sentences are the model's own, and stay those of a very small
model. Text is bounded in length so that a document always ends well within LOCAL_MAX_TOKENS.

Since the grammar holds the shape, the model is not given CrewAI's long task prompts: evaluating
a prompt costs this model ~9 s per thousand tokens on two cores, so its brief says only what to
write about (the requirement, and the titles of the approved requirements).
"""

from __future__ import annotations

import json

from delivery.documents.structure import ANALYSIS, DESIGN, REVIEW, TEST_PLAN

ENGLISH_ONLY_NOTE = (
    "> Written in English: the offline model (SmolLM2-135M) writes English only; the requirement is in Chinese.\n\n"
)

# Shared rules: an English-ish line of bounded length (no newline, no heading marks), a bullet.
_TEXT = r"""
phrase ::= [A-Za-z0-9] [A-Za-z0-9 ,.;:'()/%&+-]{6,50}
sentence ::= [A-Z] [A-Za-z0-9 ,;:'()/%&+-]{15,100} "."
bullet ::= "- " phrase "\n"
title ::= [A-Z] [A-Za-z0-9 ,'/&-]{3,30}
"""


def _literal(text: str) -> str:
    """A GBNF string literal (JSON's escapes are GBNF's)."""
    return json.dumps(text, ensure_ascii=False)


def _prefix(note: bool) -> str:
    return f"{_literal(ENGLISH_ONLY_NOTE)} " if note else ""


def grammar_for(deliverable: str, requirements: list[str], english_note: bool = False) -> str | None:
    """The GBNF grammar of `deliverable`; `requirements`: the REQ-n of the approved analysis (for
    the test plan and the design); `english_note`: start with the note that says the document is
    in English although the requirement is not."""
    if deliverable == ANALYSIS:
        reqs = [
            f"req{n} ::= {_literal(f'### REQ-{n}: ')} title \"\\n\\n\" sentence "
            f"\"\\n\\nAcceptance criteria:\\n\" bullet bullet \"\\n\""
            for n in range(1, 5)
        ]
        return (
            f"root ::= {_prefix(english_note)}\"# Requirements analysis\\n\\n## Summary\\n\\n\" sentence "
            "\"\\n\\n## Requirements\\n\\n\" req1 req2 req3 req4? "
            "\"## Assumptions\\n\\n\" bullet\n" + "\n".join(reqs) + _TEXT
        )
    if not requirements:
        requirements = ["REQ-1"]
    if deliverable == TEST_PLAN:
        cases = []
        for n, req in enumerate(requirements, 1):
            head, verifies = _literal(f"### TC-{n}: "), _literal("\n\nVerifies: " + req + "\n\nSteps:\n1. ")
            cases.append(
                f"tc{n} ::= {head} title {verifies} phrase \"\\n2. \" phrase \"\\n\\nExpected: \" phrase \"\\n\\n\""
            )
        return (
            f"root ::= {_prefix(english_note)}\"# Test plan\\n\\n\" "
            + " ".join(f"tc{n}" for n in range(1, len(requirements) + 1))
            + "\n"
            + "\n".join(cases)
            + _TEXT
        )
    if deliverable == DESIGN:
        parts = []
        for n, req in enumerate(requirements, 1):
            head, serves = _literal(f"### C-{n}: "), _literal("\n\nServes: " + req + "\n\n")
            parts.append(f"c{n} ::= {head} title {serves} sentence \"\\n\\n\"")
        return (
            f"root ::= {_prefix(english_note)}\"# Technical design\\n\\n## Architecture\\n\\n\" sentence "
            "\"\\n\\n## Components\\n\\n\" "
            + " ".join(f"c{n}" for n in range(1, len(requirements) + 1))
            + " \"## Data model\\n\\n\" bullet \"\\n## API\\n\\n\" bullet\n"
            + "\n".join(parts)
            + _TEXT
        )
    if deliverable == REVIEW:
        return (
            f"root ::= {_prefix(english_note)}\"# Delivery review\\n\\n## Findings\\n\\n\" bullet bullet "
            "\"\\n## Risks\\n\\n\" bullet \"\\nVerdict: \" (\"GO\" | \"NO-GO\") \"\\n\"" + _TEXT
        )
    return None


_WRITE = {
    ANALYSIS: "Write a requirements analysis: a summary sentence, then three or four numbered requirements, "
    "each with a title, one sentence and two acceptance criteria, then an assumption.",
    TEST_PLAN: "Write a test plan with one test case for each requirement: a title, two steps and the expected result.",
    DESIGN: "Write a technical design: the architecture in one sentence, then one component for each requirement, "
    "then the data model and the API.",
    REVIEW: "Review this delivery package: two findings, a risk, and your verdict.",
}


def brief_for(deliverable: str, requirement: str, titles: list[str], feedback: list[str]) -> str:
    """What the local model is told for `deliverable`: the requirement, the approved requirements'
    titles (`titles`, "REQ-1: Add tasks"), the user's requested changes."""
    lines = [f"The software to build: {requirement[:600]}"]
    if titles and deliverable != ANALYSIS:
        lines += ["The requirements:", *(f"- {title}" for title in titles)]
    if feedback and deliverable == ANALYSIS:
        lines += ["The user asked for these changes:", *(f"- {item[:300]}" for item in feedback)]
    lines.append(_WRITE.get(deliverable, "Write the document."))
    return "\n".join(lines)
