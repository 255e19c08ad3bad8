"""Deliverable downloads and the computed traceability matrix."""

from __future__ import annotations

import io
import json
import zipfile

from deliverables import review_with_matrix, trace
from markdown_render import to_html
from sse_client import read_stream
from test_api import run_task, wait_finished

REQUIREMENTS = """# Analysis
- REQ-1: users sign up
- REQ-2: users post articles
- REQ-3: admins moderate
- REQ-2 is the core (mentioned twice)
"""
TEST_PLAN = """| Case | Req |
| TC-1 | REQ-1 | sign-up works |
| TC-2 | REQ-2 | posting works |
| TC-3 | REQ-2 | long posts |
"""
DESIGN = """## Components
- AUTH-1 (REQ-1): auth service
- Moderation is out of scope for now (REQ-3 deferred)
"""


def test_trace_finds_the_gaps_in_crafted_documents():
    traced = trace(REQUIREMENTS, TEST_PLAN, DESIGN)
    assert traced["requirements"] == ["REQ-1", "REQ-2", "REQ-3"]
    assert traced["matrix"] == [
        {"requirement": "REQ-1", "test_cases": ["TC-1"], "design_elements": ["AUTH-1"]},
        {"requirement": "REQ-2", "test_cases": ["TC-2", "TC-3"], "design_elements": []},
        {"requirement": "REQ-3", "test_cases": [],
         "design_elements": ["- Moderation is out of scope for now (REQ-3 deferred)"]},
    ]
    assert traced["gaps"] == [{"requirement": "REQ-2", "missing": ["design"]},
                              {"requirement": "REQ-3", "missing": ["test_case"]}]
    assert traced["verdict"] == "NO-GO" and "2 of 3" in traced["reason"]


def test_trace_is_exact_about_ids_and_says_go_only_when_complete():
    assert trace("REQ-1", "TC-1 covers REQ-10", "C-1 for REQ-10")["gaps"] == [
        {"requirement": "REQ-1", "missing": ["test_case", "design"]}]
    complete = trace("REQ-1 REQ-2", "TC-1 REQ-1\nTC-2 REQ-2", "C-1 REQ-1\nC-2 REQ-2")
    assert complete["verdict"] == "GO" and complete["gaps"] == []
    nothing = trace("We will build something nice.", "", "")
    assert nothing["verdict"] == "NO-GO" and "no numbered requirements" in nothing["reason"]


def test_review_ends_with_the_computed_matrix_and_verdict():
    traced = trace(REQUIREMENTS, TEST_PLAN, DESIGN)
    review = review_with_matrix("The model says: Verdict: GO", traced, "en")
    assert review.startswith("The model says: Verdict: GO")
    assert "| REQ-2 | TC-2, TC-3 | — |" in review
    assert "- REQ-3: missing test_case" in review
    assert review.rstrip().splitlines()[-1].startswith("**Verdict: NO-GO**")
    zh = review_with_matrix("评审", traced, "zh")
    assert "可追溯性矩阵" in zh and "缺少" in zh


def test_downloads_list_single_files_and_the_zip(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a photo gallery with albums and sharing")
        wait_finished(c, task_id)
        listing = c.get(f"/api/task/{task_id}/deliverables").json()
        assert [d["filename"] for d in listing["deliverables"]] == [
            "REQUIREMENTS.md", "TEST_PLAN.md", "TECH_DESIGN.md", "DELIVERY_REVIEW.md"]
        assert [d["agent"] for d in listing["deliverables"]] == [
            "ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
        result = c.get(f"/api/task/{task_id}/result").json()
        for item in listing["deliverables"]:
            r = c.get(item["url"])
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
            assert r.text == result["deliverables"][item["name"]]
            assert item["size"] == len(r.content)
        assert c.get(f"/api/task/{task_id}/deliverables/TEST_PLAN.md").text == result["deliverables"]["test_plan"]
        html = c.get(f"/api/task/{task_id}/deliverables/test_plan", params={"format": "html"})
        assert html.status_code == 200 and html.headers["content-type"] == "text/html; charset=utf-8"
        assert html.text == to_html(result["deliverables"]["test_plan"]) and "<h1>" in html.text
        bad = c.get(f"/api/task/{task_id}/deliverables/test_plan", params={"format": "pdf"})
        assert bad.status_code == 422 and "markdown" in bad.text
        missing = c.get(f"/api/task/{task_id}/deliverables/secrets")
        assert missing.status_code == 404 and "test_plan" in missing.json()["detail"]

        # the scripted crew traces every requirement, so the computed verdict is GO
        assert result["traceability"]["verdict"] == "GO" and result["traceability"]["gaps"] == []
        assert result["deliverables"]["delivery_review"].rstrip().splitlines()[-1].startswith("**Verdict: GO**")

        z = c.get(f"/api/task/{task_id}/deliverables.zip")
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        assert task_id in z.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(z.content))
        assert sorted(archive.namelist()) == sorted([
            "REQUIREMENTS.md", "TEST_PLAN.md", "TECH_DESIGN.md", "DELIVERY_REVIEW.md", "events.jsonl", "task.json"])
        assert archive.read("TECH_DESIGN.md").decode() == result["deliverables"]["technical_design"]
        logged = [json.loads(line) for line in archive.read("events.jsonl").decode().splitlines()]
        assert logged == read_stream(server.url, task_id).events
        task = json.loads(archive.read("task.json"))
        assert task["task_id"] == task_id and task["status"] == "succeeded"
        assert task["traceability"] == result["traceability"]


def test_deliverables_before_the_end(slow_server):
    import httpx

    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c, "Build a kanban board")
        assert c.get(f"/api/task/{task_id}/deliverables.zip").status_code == 409
        r = c.get(f"/api/task/{task_id}/deliverables/delivery_review")
        assert r.status_code == 404 and "not been produced yet" in r.json()["detail"]
        wait_finished(c, task_id)
