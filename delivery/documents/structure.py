"""The shape of each deliverable, and the code that checks a document against it.

Documents are Markdown with a few fixed lines that code can read (docs/api.md, "Deliverables"):

    requirements analysis   ### REQ-n: <title>  ... "Acceptance criteria:" and at least one "- " line
    test plan               ### TC-n: <title>   "Verifies: REQ-a, REQ-b"  "Steps:" numbered lines
                                                 "Expected: <result>"
    technical design        ### <ID>-n: <name>  "Serves: REQ-a, REQ-b"  (e.g. C-1, API-2)
    delivery review         "## Findings" and "## Risks" sections with "- " items, and a last line
                            "Verdict: GO" or "Verdict: NO-GO"

`check(deliverable, text, requirements)` lists every gap a document has: a missing part, an
item without what it needs, a reference to a requirement that does not exist, and (test plan and
design) a requirement nothing covers. An empty list is a well-formed, fully traced document.
Headings and labels are also accepted in Chinese (验收标准, 验证, 步骤, 预期结果, 对应需求, 发现, 风险).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ANALYSIS, TEST_PLAN, DESIGN, REVIEW = "requirements_analysis", "test_plan", "technical_design", "delivery_review"

_ITEM = re.compile(r"^#{2,4}\s*\**\s*([A-Z][A-Z0-9]{0,9})-(\d+)\**\s*[:：.\-—]?\s*(.*)$")
_REQ_REF = re.compile(r"\bREQ-(\d+)\b")
_LABEL = {
    "criteria": re.compile(r"^\**\s*(acceptance criteria|验收标准)\s*\**\s*[:：]?", re.I),
    "verifies": re.compile(r"^\**\s*(verifies|验证需求|验证)\s*\**\s*[:：]", re.I),
    "steps": re.compile(r"^\**\s*(steps|步骤)\s*\**\s*[:：]?", re.I),
    "expected": re.compile(r"^\**\s*(expected(?: result)?|预期结果|预期)\s*\**\s*[:：]\s*(.*)$", re.I),
    "serves": re.compile(r"^\**\s*(serves|对应需求|服务于)\s*\**\s*[:：]", re.I),
}
_SECTION = re.compile(r"^#{1,3}\s*(.+?)\s*$")
_FINDINGS = re.compile(r"^(findings|发现|评审发现)\b", re.I)
_RISKS = re.compile(r"^(risks|风险)\b", re.I)
_VERDICT = re.compile(r"^\**\s*verdict\s*[:：]\s*(GO|NO-GO)\s*\**", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S")


@dataclass
class Item:
    """One numbered item of a document: a requirement, a test case or a design element."""

    id: str
    title: str
    lines: list[str] = field(default_factory=list)

    def refs(self, label: str) -> list[str]:
        """The REQ ids on this item's `label` line (Verifies:, Serves:)."""
        for line in self.lines:
            if _LABEL[label].match(line.strip()):
                return [f"REQ-{int(n)}" for n in _REQ_REF.findall(line)]
        return []

    def has(self, label: str) -> bool:
        return any(_LABEL[label].match(line.strip()) for line in self.lines)

    def bullets_after(self, label: str) -> int:
        """How many list lines follow the `label` line (until the next label)."""
        count, inside = 0, False
        for line in self.lines:
            stripped = line.strip()
            if _LABEL[label].match(stripped):
                inside = True
                continue
            if inside:
                if any(pattern.match(stripped) for pattern in _LABEL.values()):
                    break
                if _BULLET.match(line):
                    count += 1
        return count


def items(text: str, prefix: str | None = None) -> list[Item]:
    """The `### ID-n: title` items of a document (only those with `prefix`, e.g. "REQ", when
    given), each with the lines under it up to the next heading."""
    found: list[Item] = []
    current: Item | None = None
    for line in text.splitlines():
        stripped = line.strip()
        match = _ITEM.match(stripped)
        if match:
            kind = match.group(1)
            current = (
                Item(f"{kind}-{int(match.group(2))}", match.group(3).strip(" *"))
                if prefix is None or kind == prefix
                else None
            )
            if current is not None:
                found.append(current)
        elif _SECTION.match(stripped):  # any other heading ends the item
            current = None
        elif current is not None:
            current.lines.append(line)
    return found


def requirement_ids(analysis: str) -> list[str]:
    """The REQ-n the analysis defines, in order (each once)."""
    return list(dict.fromkeys(item.id for item in items(analysis, "REQ")))


def _refs_problems(kind: str, item: Item, refs: list[str], known: set[str], label: str) -> list[str]:
    problems = []
    if not refs:
        problems.append(f"{item.id} has no \"{label}:\" line naming the REQ-n it {kind}")
    for ref in refs:
        if ref not in known:
            problems.append(f"{item.id} names {ref}, which the requirements analysis does not define")
    return problems


# The line delivery/llm/remote.py appends to an answer that stopped at LLM_MAX_TOKENS before its
# end. It is a gap of its own, so the fix loop asks for a shorter document, and a document still
# cut off after the last fix round says so (and the verdict is NO-GO).
CUT_OFF_NOTE = "> Cut off: the model reached its output cap of {cap} tokens (LLM_MAX_TOKENS) before the end."
_CUT_OFF = re.compile(r"^> Cut off: the model reached its output cap of (\d+) tokens", re.M)
_CUT_OFF_GAP = (
    "the answer was cut off at the output cap of {cap} tokens before it ended: write the whole document more briefly"
)


def check(deliverable: str, text: str, requirements: list[str]) -> list[str]:
    """Every gap of `text` as the `deliverable` named; `requirements`: the REQ-n of the approved
    analysis (for the test plan and the design). [] when the document is complete."""
    if not text.strip():
        return ["the document is empty"]
    cut = _CUT_OFF.search(text)
    return ([_CUT_OFF_GAP.format(cap=cut[1])] if cut else []) + _check_shape(deliverable, text, requirements)


def _check_shape(deliverable: str, text: str, requirements: list[str]) -> list[str]:
    if deliverable == ANALYSIS:
        return _check_analysis(text)
    if deliverable == TEST_PLAN:
        return _check_test_plan(text, requirements)
    if deliverable == DESIGN:
        return _check_design(text, requirements)
    if deliverable == REVIEW:
        return _check_review(text)
    return []


def _check_analysis(text: str) -> list[str]:
    reqs = items(text, "REQ")
    if not reqs:
        return ["no requirement is numbered as \"### REQ-1: <title>\""]
    problems = []
    numbers = [int(r.id.split("-")[1]) for r in reqs]
    if numbers != list(range(1, len(reqs) + 1)):
        problems.append(
            f"requirements must be numbered REQ-1 to REQ-{len(reqs)} in order (found {', '.join(r.id for r in reqs)})"
        )
    for req in reqs:
        if not req.title:
            problems.append(f"{req.id} has no title")
        if not req.has("criteria") or req.bullets_after("criteria") == 0:
            problems.append(
                f"{req.id} has no acceptance criteria (an \"Acceptance criteria:\" line, then \"- \" items)"
            )
    return problems


def _check_test_plan(text: str, requirements: list[str]) -> list[str]:
    cases = items(text, "TC")
    if not cases:
        return ["no test case is numbered as \"### TC-1: <title>\""]
    known, problems, covered = set(requirements), [], set()
    for case in cases:
        refs = case.refs("verifies")
        covered.update(refs)
        problems += _refs_problems("verifies", case, refs, known, "Verifies")
        if not case.has("steps") or not any(_NUMBERED.match(line) for line in case.lines):
            problems.append(f"{case.id} has no steps (a \"Steps:\" line, then numbered steps)")
        expected = next((m for line in case.lines if (m := _LABEL["expected"].match(line.strip()))), None)
        if expected is None or not expected.group(2).strip():
            problems.append(f"{case.id} has no expected result (an \"Expected: <result>\" line)")
    problems += [f"{req} has no test case (no TC-n verifies it)" for req in requirements if req not in covered]
    return problems


def _check_design(text: str, requirements: list[str]) -> list[str]:
    elements = [item for item in items(text) if item.id.split("-")[0] not in ("REQ", "TC")]
    if not elements:
        return ["no design element is numbered as \"### C-1: <name>\""]
    known, problems, covered = set(requirements), [], set()
    for element in elements:
        refs = element.refs("serves")
        covered.update(refs)
        problems += _refs_problems("serves", element, refs, known, "Serves")
    problems += [f"{req} has no design element (no element serves it)" for req in requirements if req not in covered]
    return problems


def _check_review(text: str) -> list[str]:
    sections = [m.group(1) for line in text.splitlines() if (m := _SECTION.match(line.strip()))]
    problems = []
    if not any(_FINDINGS.match(title) for title in sections):
        problems.append("the review has no \"## Findings\" section")
    if not any(_RISKS.match(title) for title in sections):
        problems.append("the review has no \"## Risks\" section")
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    if not _VERDICT.match(last):
        problems.append("the review does not end with the line \"Verdict: GO\" or \"Verdict: NO-GO\"")
    return problems


def verdict_line(text: str) -> str | None:
    """GO or NO-GO from a review's last line, if it has one."""
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    match = _VERDICT.match(last)
    return match.group(1).upper() if match else None
