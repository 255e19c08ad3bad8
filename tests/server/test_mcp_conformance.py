"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
tests/conformance/package-lock.json and installed there by `make test` with `npm ci`) against
our /mcp. Only the scenarios in tests/conformance/expected-failures.yml may fail, each for the
reason written there; the suite itself fails on any other failure and on a baseline entry that
passes. The result table is in docs/api.md ("MCP")."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CONFORMANCE = Path(__file__).resolve().parents[1] / "conformance"
CLI = CONFORMANCE / "node_modules" / ".bin" / "conformance"


def test_the_official_conformance_suite_passes_but_for_its_baseline(server, tmp_path):
    if shutil.which("node") is None or not CLI.exists():
        pytest.fail(f"{CLI} is missing: run `make conformance-tools` (`make test` does) to install it with npm ci")
    run = subprocess.run(
        [
            str(CLI),
            "server",
            "--url",
            f"{server.url}/mcp",
            "--expected-failures",
            str(CONFORMANCE / "expected-failures.yml"),
            "--output-dir",
            str(tmp_path),
        ],
        cwd=CONFORMANCE,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "Baseline check passed" in run.stdout
    # Every scenario ran and left its checks (a suite that ran nothing would pass too).
    scenarios = {json.loads(p.read_text()) and p.parent.name for p in tmp_path.glob("*/checks.json")}
    assert len(scenarios) >= 30, sorted(scenarios)
