"""The delivery package a user downloads: every document under its file name, the full event log
and the task's record."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from delivery.crew.roster import ROSTER


def build_zip(deliverables: dict[str, str], events: list[dict[str, Any]], task: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, filename in ROSTER.filenames.items():
            archive.writestr(filename, deliverables.get(key, ""))
        archive.writestr("events.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
        archive.writestr("task.json", json.dumps(task, ensure_ascii=False, indent=2))
    return buffer.getvalue()
