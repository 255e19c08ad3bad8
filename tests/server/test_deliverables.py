"""Deliverable downloads: single documents, rendered HTML, the zip, against a real server."""

from __future__ import annotations

import io
import json
import zipfile

import httpx

from delivery.documents.render import to_html
from tests.support.api import run_task, wait_finished
from tests.support.sse_client import read_stream


def test_downloads_list_single_files_and_the_zip(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a photo gallery with albums and sharing")
        wait_finished(c, task_id)
        listing = c.get(f"/api/task/{task_id}/deliverables").json()
        assert [d["filename"] for d in listing["deliverables"]] == [
            "REQUIREMENTS.md",
            "TEST_PLAN.md",
            "TECH_DESIGN.md",
            "DELIVERY_REVIEW.md",
        ]
        assert [d["agent"] for d in listing["deliverables"]] == [
            "ProductManager",
            "QAEngineer",
            "SoftwareDeveloper",
            "Coordinator",
        ]
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
        assert result["deliverables"]["delivery_review"].rstrip().splitlines()[-1] == "Verdict: GO"

        z = c.get(f"/api/task/{task_id}/deliverables.zip")
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        assert task_id in z.headers["content-disposition"]
        archive = zipfile.ZipFile(io.BytesIO(z.content))
        finals = ["REQUIREMENTS.md", "TEST_PLAN.md", "TECH_DESIGN.md", "DELIVERY_REVIEW.md"]
        # one draft each (no gaps to fix), and the review once more with the computed verdict
        versions = [f"versions/{name[:-3]}.v1.md" for name in finals] + ["versions/DELIVERY_REVIEW.v2.md"]
        expected = [*finals, "events.jsonl", "task.json", *versions, "versions/index.json"]
        assert sorted(archive.namelist()) == sorted(expected)
        assert archive.read("versions/DELIVERY_REVIEW.v2.md") == archive.read("DELIVERY_REVIEW.md")
        assert archive.read("TECH_DESIGN.md").decode() == result["deliverables"]["technical_design"]
        logged = [json.loads(line) for line in archive.read("events.jsonl").decode().splitlines()]
        assert logged == read_stream(server.url, task_id).events
        task = json.loads(archive.read("task.json"))
        assert task["task_id"] == task_id and task["status"] == "succeeded"
        assert task["traceability"] == result["traceability"]


def test_deliverables_before_the_end(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c, "Build a kanban board")
        assert c.get(f"/api/task/{task_id}/deliverables.zip").status_code == 409
        r = c.get(f"/api/task/{task_id}/deliverables/delivery_review")
        assert r.status_code == 404 and "not been produced yet" in r.json()["detail"]
        wait_finished(c, task_id)
