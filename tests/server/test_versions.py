"""The fix loop, versions and diffs as a client sees them, on a server whose scripted double
leaves gaps in every first draft (SCRIPTED_GAPS)."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest

from tests.support.api import AGENTS, run_task, stream_until, wait_finished, wait_status
from tests.support.sse_client import read_stream


@pytest.fixture(scope="module")
def gappy(start_server):
    return start_server(scripted_gaps=True)


def test_every_fix_round_is_seen_kept_and_diffable(gappy):
    with httpx.Client(base_url=gappy.url, timeout=30) as c:
        task_id = run_task(c, "Build a shop with a cart, payments and order history")
        wait_finished(c, task_id)
        result = c.get(f"/api/task/{task_id}/result").json()
        listing = c.get(f"/api/task/{task_id}/deliverables/test_plan/versions").json()
        first = c.get(f"/api/task/{task_id}/deliverables/test_plan/versions/1").text
        second = c.get(f"/api/task/{task_id}/deliverables/TEST_PLAN.md/versions/2").text
        diff = c.get(f"/api/task/{task_id}/deliverables/test_plan/diff")
        diff_html = c.get(f"/api/task/{task_id}/deliverables/test_plan/diff", params={"format": "html"})
        explicit = c.get(f"/api/task/{task_id}/deliverables/test_plan/diff", params={"from": 2, "to": 1})
        missing = c.get(f"/api/task/{task_id}/deliverables/test_plan/versions/9")
        too_big = c.get(f"/api/task/{task_id}/deliverables/test_plan/versions/99999999")
        zipped = zipfile.ZipFile(io.BytesIO(c.get(f"/api/task/{task_id}/deliverables.zip").content))
    events = read_stream(gappy.url, task_id).events
    checks = [e for e in events if e["event_type"] == "check"]
    assert [(e["agent_name"], e["metadata"]["fix_round"], e["metadata"]["passed"]) for e in checks] == [
        (agent, n, n == 1) for agent in AGENTS for n in (0, 1)
    ]
    assert events[-1]["metadata"]["verdict"] == "GO" and events[-1]["metadata"]["problems"] == {}
    assert result["traceability"]["verdict"] == "GO" and result["traceability"]["problems"] == {}

    assert listing["deliverable"] == "test_plan"
    assert [(v["number"], v["agent"], v["reason"]) for v in listing["versions"]] == [
        (1, "QAEngineer", "first draft"),
        (2, "QAEngineer", "fix round 1"),
    ]
    assert listing["versions"][0]["gaps"] == [
        "TC-1 names REQ-99, which the requirements analysis does not define",
        "REQ-4 has no test case (no TC-n verifies it)",
    ]
    assert listing["versions"][1]["gaps"] == [] and listing["versions"][1]["size"] == len(second.encode())
    assert "REQ-99" in first and "REQ-99" not in second and second == result["deliverables"]["test_plan"]
    assert diff.status_code == 200 and diff.headers["content-type"].startswith("text/x-diff")
    assert "--- test_plan v1" in diff.text and "+++ test_plan v2" in diff.text
    assert "-Verifies: REQ-1, REQ-99" in diff.text and "+Verifies: REQ-1" in diff.text
    assert "<ins>### TC-4:" in diff_html.text and "<del>Verifies: REQ-1, REQ-99</del>" in diff_html.text
    assert "+Verifies: REQ-1, REQ-99" in explicit.text  # from 2 back to 1
    assert missing.status_code == 404 and "versions lists them" in missing.json()["detail"]
    assert too_big.status_code == 422
    index = {entry["file"]: entry for entry in json.loads(zipped.read("versions/index.json"))}
    assert index["versions/TEST_PLAN.v1.md"]["reason"] == "first draft"
    assert index["versions/TEST_PLAN.v1.md"]["gaps"] == listing["versions"][0]["gaps"]
    assert zipped.read("versions/TEST_PLAN.v1.md").decode() == first
    assert zipped.read("TEST_PLAN.md").decode() == second  # the final version at the top
    assert len([n for n in zipped.namelist() if n.startswith("versions/DELIVERY_REVIEW.")]) == 3


def test_the_confirmation_knows_what_changed_since_the_last_one(gappy):
    with httpx.Client(base_url=gappy.url, timeout=30) as c:
        task_id = run_task(c, "Build a notes app with tags", skip_confirmation=False)
        first = stream_until(gappy.url, task_id, "awaiting_confirmation").events[-1]
        c.post(f"/api/task/{task_id}/confirm", json={"approved": False, "feedback": "add offline sync"})
        wait_status(c, task_id, "running")
        second = stream_until(gappy.url, task_id, "awaiting_confirmation", after=first["sequence"]).events[-1]
        versions = c.get(f"/api/task/{task_id}/deliverables/requirements_analysis/versions").json()["versions"]
        diff = c.get(
            f"/api/task/{task_id}/deliverables/requirements_analysis/diff",
            params={"from": second["metadata"]["previous_version"], "to": second["metadata"]["version"]},
        )
        c.post(f"/api/task/{task_id}/cancel")
    # Each round's draft had a gap and was fixed: v1 draft, v2 its fix; v3 the revision, v4 its fix.
    assert [v["reason"] for v in versions] == [
        "first draft",
        "fix round 1",
        "revision round 1: add offline sync",
        "fix round 1",
    ]
    assert (first["metadata"]["version"], first["metadata"]["previous_version"]) == (2, None)
    assert (second["metadata"]["version"], second["metadata"]["previous_version"]) == (4, 2)
    assert "+### REQ-" in diff.text and "offline sync" in diff.text


def test_versions_of_unknown_things_are_404_with_what_exists(gappy):
    with httpx.Client(base_url=gappy.url, timeout=30) as c:
        assert c.get("/api/task/no-such-task/deliverables/test_plan/versions").status_code == 404
        task_id = run_task(c, "Build a guestbook")
        wait_finished(c, task_id)
        r = c.get(f"/api/task/{task_id}/deliverables/secrets/versions")
        assert r.status_code == 404 and "test_plan" in r.json()["detail"]
        r = c.get(f"/api/task/{task_id}/deliverables/test_plan/diff", params={"from": 1, "to": 7})
        assert r.status_code == 404 and "no version 7" in r.json()["detail"]
