"""The scripted test double: deterministic, labelled, traceable documents, streamed token by token."""

from __future__ import annotations

from delivery.crew.roster import ROSTER
from delivery.documents.structure import check, requirement_ids
from delivery.llm.scripted import ScriptedLLM, requirement_items, scripted_document, tokenize


def test_scripted_documents_are_deterministic_labelled_and_traceable():
    req = "Build a shop with a cart, payments and order history"
    items = requirement_items(req)
    assert len(items) >= 3
    docs = {key: scripted_document(key, req, "en") for key in ROSTER.deliverable_keys}
    assert docs == {key: scripted_document(key, req, "en") for key in docs}
    for n in range(1, len(items) + 1):
        assert f"### REQ-{n}: " in docs["requirements_analysis"] and f"Verifies: REQ-{n}\n" in docs["test_plan"]
        assert f"Serves: REQ-{n}\n" in docs["technical_design"]
    ids = requirement_ids(docs["requirements_analysis"])
    assert len(ids) == len(items) and all(check(key, docs[key], ids) == [] for key in docs)  # complete and traced
    assert all("scripted provider" in d for d in docs.values())
    assert "".join(tokenize(docs["test_plan"])) == docs["test_plan"]
    assert tokenize("开发 app") == ["开", "发", " ", "app"]


def test_each_agent_gets_the_document_its_deliverable_names():
    for spec in ROSTER.agents:
        llm = ScriptedLLM(model="scripted-test-double", agent_name=spec.name, requirement="Build a wiki")
        streamed: list[str] = []
        document = scripted_document(spec.deliverable, "Build a wiki", "en")
        completion = llm.complete("", streamed.append)
        assert completion.text == "".join(streamed) == document
        assert completion.completion_tokens == len(streamed) == len(tokenize(document))


def test_with_gaps_only_the_first_draft_has_them():
    llm = ScriptedLLM(
        model="scripted-test-double",
        agent_name="QAEngineer",
        requirement="Build a shop with a cart",
        first_draft_with_gaps=True,
    )
    first, second = (llm.complete("", lambda token: None).text for _ in range(2))
    assert "REQ-99" in first and "REQ-99" not in second
