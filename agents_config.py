"""The crew as data: agents in pipeline order, their task prompts, and the Qwen endpoint.
Edit here to customise; everything else (crews, deliverables, the API, the test UI) reads this.

The first agent writes the analysis the user confirms; the others form the delivery crew and
each sees the approved analysis and every earlier deliverable.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

QWEN_MODEL_CONFIG = {
    "model": "qwen-plus",
    "base_url": "https://dashscope.aliyuncs.com/compatible-mode/v1",
    "api_key_env": "DASHSCOPE_API_KEY",
}


class AgentSpec(BaseModel):
    """One agent and the document it writes."""

    model_config = ConfigDict(frozen=True)

    name: str  # `agent_name` in the event stream
    role: str
    goal: str
    backstory: str
    deliverable: str  # key of its document in results, URLs and the UI
    filename: str  # the document's file in the zip and in downloads
    title: dict[str, str]  # what the document is called, per language (the UI's agent cards)
    tab: dict[str, str]  # a short label, per language (the UI's document tabs)
    description: str  # the task prompt; {requirement} is replaced by the user's requirement
    expected_output: str


AGENTS: list[AgentSpec] = [
    AgentSpec(
        name="ProductManager",
        role="Product Manager",
        goal="Turn the user's requirement into clear, numbered, testable requirements.",
        backstory=(
            "A pragmatic product manager who has shipped many web products. You write short "
            "requirement lists with acceptance criteria and call out assumptions and open questions."
        ),
        deliverable="requirements_analysis",
        filename="REQUIREMENTS.md",
        title={"en": "Requirements analysis", "zh": "需求分析"},
        tab={"en": "Requirements", "zh": "需求分析"},
        description=(
            "Analyse this software requirement:\n\n{requirement}\n\n"
            "Write a requirements analysis in Markdown with exactly these parts:\n"
            "# Requirements analysis\n## Summary\n(one paragraph)\n## Requirements\n"
            "then each requirement as\n### REQ-1: <title>\n<one or two sentences>\n"
            "Acceptance criteria:\n- <a criterion a tester can check>\n"
            "numbered REQ-1, REQ-2, ... in order, and last\n## Assumptions\n- <assumption>"
        ),
        expected_output="A Markdown requirements analysis: ### REQ-n items, each with acceptance criteria.",
    ),
    AgentSpec(
        name="QAEngineer",
        role="QA Engineer",
        goal="Write a test plan that verifies every requirement.",
        backstory=(
            "A meticulous QA engineer. Every test case you write names the requirement it checks "
            "and has steps and an expected result."
        ),
        deliverable="test_plan",
        filename="TEST_PLAN.md",
        title={"en": "Test plan", "zh": "测试计划"},
        tab={"en": "Test plan", "zh": "测试计划"},
        description=(
            "Using the requirements analysis in your context, write a test plan in Markdown for:"
            "\n\n{requirement}\n\nStart with # Test plan, then each test case as\n### TC-1: <title>\n"
            "Verifies: REQ-1\nSteps:\n1. <step>\n2. <step>\nExpected: <the result a tester checks>\n"
            "Every REQ-n of the analysis needs at least one test case; name only REQ-n the analysis defines."
        ),
        expected_output="A Markdown test plan: ### TC-n cases, each with Verifies, Steps and Expected.",
    ),
    AgentSpec(
        name="SoftwareDeveloper",
        role="Software Developer",
        goal="Design a technical solution that meets the requirements and passes the test plan.",
        backstory=(
            "A senior engineer who favours simple architectures: components, data model, API and "
            "the reasons for each choice."
        ),
        deliverable="technical_design",
        filename="TECH_DESIGN.md",
        title={"en": "Technical design", "zh": "技术设计"},
        tab={"en": "Design", "zh": "技术设计"},
        description=(
            "Using the requirements and the test plan in your context, write a technical design in "
            "Markdown for:\n\n{requirement}\n\nStart with # Technical design and ## Architecture, then "
            "## Components with each element as\n### C-1: <name>\nServes: REQ-1, REQ-2\n<what it does>\n"
            "then ## Data model and ## API. Every REQ-n needs at least one element that serves it; "
            "name only REQ-n the analysis defines."
        ),
        expected_output="A Markdown technical design: ### C-n elements, each with a Serves line.",
    ),
    AgentSpec(
        name="Coordinator",
        role="Delivery Coordinator",
        goal="Review the package for consistency and decide whether it is ready to deliver.",
        backstory=(
            "A delivery lead who checks that requirements, tests and design line up, lists the "
            "gaps and gives a clear go / no-go."
        ),
        deliverable="delivery_review",
        filename="DELIVERY_REVIEW.md",
        title={"en": "Delivery review", "zh": "交付评审"},
        tab={"en": "Review", "zh": "交付评审"},
        description=(
            "Review the requirements, test plan and technical design in your context for:\n\n"
            "{requirement}\n\nWrite a delivery review in Markdown: # Delivery review, then\n## Findings\n"
            "- <a consistency finding or gap>\n## Risks\n- <a risk>\nand as the very last line "
            "'Verdict: GO' or 'Verdict: NO-GO'."
        ),
        expected_output="A Markdown delivery review: Findings, Risks, and a last line with the verdict.",
    ),
]

# Appended to the delivery crew's tasks: the analysis the user approved.
APPROVED_ANALYSIS = "\n\nThe approved requirements analysis:\n\n{analysis}"
# Appended for each document a colleague finished before the crew went on after a lost process.
EARLIER_DELIVERABLE = "\n\nAlready written by a colleague, {title}:\n\n{text}"

# Appended to the first agent's task when the user asked for changes.
REVISION_REQUEST = (
    "\n\nYour previous analysis:\n\n{previous}\n\nThe user reviewed it and asked for these "
    "changes:\n\n{feedback}\n\nRevise the analysis accordingly, keeping the REQ-n numbering."
)

LANGUAGE_INSTRUCTIONS = {
    "zh": "\n\n请使用简体中文撰写全部内容。",
    "en": "\n\nWrite everything in English.",
}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """'zh' when Chinese characters make up a real share of the letters, else 'en'."""
    cjk = len(_CJK.findall(text))
    latin_words = len(_LATIN.findall(text)) / 5  # ~5 letters per English word
    return "zh" if cjk and cjk >= latin_words * 0.5 else "en"
