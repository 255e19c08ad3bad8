"""Quick self-check from the seed README: `python test_import.py` prints a checklist and exits
non-zero when any check fails. Runs offline on the scripted provider; no server needed."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback

os.environ.setdefault("LLM_PROVIDER", "scripted")


def check_imports() -> None:
    import agents_config  # noqa: F401
    import crew_factory  # noqa: F401
    import main  # noqa: F401
    import stream_manager  # noqa: F401
    import worker  # noqa: F401


def check_agents() -> None:
    from agents_config import AGENTS
    from crew_factory import build_analysis_crew, build_delivery_crew
    from delivery.llm.providers import make_llm_factory
    from delivery.settings import get_settings
    from delivery.tasks.records import TaskRecord

    record = TaskRecord(task_id="self-check", requirement="self check", skip_confirmation=True, language="en")
    factory = make_llm_factory(get_settings())
    crews = [build_analysis_crew(record, factory), build_delivery_crew(record, factory)]
    roles = [agent.role for crew in crews for agent in crew.agents]
    assert roles == [a.role for a in AGENTS], roles


def check_stream_manager() -> None:
    from delivery.streaming.memory import MemoryEventBackend
    from stream_manager import StreamManager

    manager = StreamManager(MemoryEventBackend())
    manager.open("self-check")
    for n in range(3):
        manager.publish("self-check", "System", "thought", str(n), None)
    manager.publish("self-check", "System", "end", "", None)

    async def read() -> list[int]:
        return [e.sequence async for batch in manager.subscribe("self-check") for e in batch]

    assert asyncio.run(read()) == [1, 2, 3, 4]


def check_routes() -> None:
    from main import app

    paths = set(app.openapi()["paths"]) | {getattr(r, "path", "") for r in app.routes}
    expected = {
        "/api/run_task",
        "/api/stream/{task_id}",
        "/api/task/{task_id}/status",
        "/api/task/{task_id}/result",
        "/api/task/{task_id}/confirm",
        "/api/task/{task_id}/cancel",
        "/api/task/{task_id}/deliverables",
        "/api/task/{task_id}/deliverables.zip",
        "/api/tasks",
        "/api/streams",
        "/api/crew",
        "/healthz",
        "/test-ui",
    }
    missing = expected - paths
    assert not missing, f"missing routes: {missing}"


CHECKS = [
    ("Module Imports", check_imports),
    ("Agent Creation", check_agents),
    ("Stream Manager", check_stream_manager),
    ("API Endpoints", check_routes),
]


def main() -> int:
    failed = 0
    for name, check in CHECKS:
        try:
            check()
            print(f"[OK] {name}")
        except Exception:  # noqa: BLE001 - report every failing check
            failed += 1
            print(f"[FAIL] {name}")
            traceback.print_exc()
    if failed:
        print(f"[FAILED] {failed} of {len(CHECKS)} checks failed.")
        return 1
    print("[SUCCESS] All tests passed! System is ready.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
