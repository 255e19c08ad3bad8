"""`make eval`: the quality benchmark. Every requirement in quality/requirements.json goes through
the crew on the configured provider (LLM_PROVIDER, default: the bundled local model; set
DASHSCOPE_API_KEY or OPENAI_BASE_URL to compare a real model), one task at a time, on a real
server. Writes docs/quality.json and docs/quality.md: per requirement the number of REQ-n,
traceability coverage, fix rounds, verdict, wall time and tokens; and the totals.

QUALITY_ONLY=en-todo,zh-todo runs some of them (written to docs/quality-partial.*).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.server_process import Server
from tests.support.sse_client import read_stream

ROOT = Path(__file__).resolve().parent.parent
PASS_THROUGH = (
    "LLM_PROVIDER",
    "DASHSCOPE_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "LLM_MODEL",
    "LOCAL_MAX_TOKENS",
    "LOCAL_THREADS",
    "MAX_FIX_ROUNDS",
    "LLM_PRICES",
    "STRUCTURED_OUTPUT",
)


def run_one(server: Server, item: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        started = time.monotonic()
        task_id = client.post(
            "/api/run_task", json={"user_requirement": item["requirement"], "skip_confirmation": True}
        ).json()["task_id"]
        events = read_stream(server.url, task_id, timeout=1800).events
        wall = time.monotonic() - started
        status = client.get(f"/api/task/{task_id}/status").json()
        result = client.get(f"/api/task/{task_id}/result").json() if status["status"] != "queued" else {}
    traced = result.get("traceability") or {}
    requirements = traced.get("requirements", [])
    covered = [row for row in traced.get("matrix", []) if row["test_cases"] and row["design_elements"]]
    checks = [e["metadata"] for e in events if e["event_type"] == "check"]
    return {
        "id": item["id"],
        "language": item["language"],
        "task_id": task_id,
        "status": status["status"],
        "requirements": len(requirements),
        "coverage": round(len(covered) / len(requirements), 3) if requirements else 0.0,
        "fix_rounds": sum(1 for c in checks if c["fix_round"] > 0),
        "well_formed": bool(traced) and not traced.get("problems"),
        "problems": traced.get("problems", {}),
        "verdict": traced.get("verdict", "none"),
        "wall_s": round(wall, 1),
        "tokens": status["usage"]["total"]["total_tokens"],
        "cost": status["usage"]["total"]["cost"],
        "currency": status["usage"]["total"]["currency"],
        "error": status["error"],
    }


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    go = sum(r["verdict"] == "GO" for r in results)
    formed = sum(r["well_formed"] for r in results)
    walls = [r["wall_s"] for r in results]
    lines = [
        "# Quality benchmark",
        "",
        f"`make eval` on {meta['date']}: {len(results)} requirements (half Chinese, half English) through the crew "
        f"on **{meta['provider']}**, one task at a time, on {meta['cpu']} ({meta['cores']} cores). Raw figures: "
        "`docs/quality.json`; method and requirements: `quality/`.",
        "",
        "| Total | Value |",
        "|---|---|",
        f"| Packages well-formed (the check finds no gap) | {formed} of {len(results)} |",
        f"| Verdict GO | {go} of {len(results)} |",
        f"| Median wall time per task | {statistics.median(walls):.1f} s |",
        f"| Slowest task | {max(walls):.1f} s |",
        f"| Mean requirements per analysis | {statistics.mean(r['requirements'] for r in results):.1f} |",
        f"| Mean traceability coverage | {statistics.mean(r['coverage'] for r in results):.0%} |",
        f"| Fix rounds used | {sum(r['fix_rounds'] for r in results)} |",
        f"| Tokens per task (median) | {statistics.median(r['tokens'] for r in results):.0f} |",
        "",
        "| Requirement | REQ-n | Coverage | Fix rounds | Verdict | Wall time | Tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['id']} | {r['requirements']} | {r['coverage']:.0%} | {r['fix_rounds']} | {r['verdict']} | "
            f"{r['wall_s']:.1f} s | {r['tokens']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    items = json.loads((ROOT / "quality" / "requirements.json").read_text())
    only = set(filter(None, os.environ.get("QUALITY_ONLY", "").split(",")))
    if only:
        items = [i for i in items if i["id"] in only]
    env = {name: os.environ[name] for name in PASS_THROUGH if os.environ.get(name)}
    env.setdefault("LLM_PROVIDER", "local")
    env.update(
        {
            "DATA_DIR": tempfile.mkdtemp(prefix="eval-"),
            "MAX_CONCURRENT_TASKS": "1",
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }
    )
    server = Server(env, Path(env["DATA_DIR"]) / "server.log")
    try:
        provider = httpx.get(server.url + "/healthz", timeout=10).json()["provider"]
        results = []
        for item in items:
            results.append(run_one(server, item))
            r = results[-1]
            print(
                f"{r['id']:14s} {r['status']:9s} REQ={r['requirements']} coverage={r['coverage']:.0%} "
                f"fix={r['fix_rounds']} {r['verdict']:5s} {r['wall_s']:6.1f}s {r['tokens']} tokens",
                flush=True,
            )
    finally:
        server.stop()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    meta = {
        "provider": provider,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    stem = "quality-partial" if only else "quality"
    (ROOT / "docs" / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=2)
    )
    (ROOT / "docs" / f"{stem}.md").write_text(report(results, meta))
    print(f"wrote docs/{stem}.json and docs/{stem}.md")


if __name__ == "__main__":
    main()
