"""The delivery package a user downloads: every document under its file name (its final
version), every earlier version under versions/, the full event log and the task's record."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any

from delivery.crew.roster import ROSTER
from delivery.tasks.records import DocumentVersion


def build_zip(
    deliverables: dict[str, str],
    events: list[dict[str, Any]],
    task: dict[str, Any],
    versions: Sequence[DocumentVersion] = (),
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, filename in ROSTER.filenames.items():
            archive.writestr(filename, deliverables.get(key, ""))
        index = []
        for version in versions:
            stem = ROSTER.filenames.get(version.deliverable, version.deliverable).removesuffix(".md")
            path = f"versions/{stem}.v{version.number}.md"
            archive.writestr(path, version.content)
            index.append(
                {
                    "file": path,
                    "deliverable": version.deliverable,
                    "version": version.number,
                    "agent": version.agent,
                    "reason": version.reason,
                    "created_at": version.created_at,
                    "gaps": version.gaps,
                }
            )
        if index:
            archive.writestr("versions/index.json", json.dumps(index, ensure_ascii=False, indent=2))
        archive.writestr("events.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
        archive.writestr("task.json", json.dumps(task, ensure_ascii=False, indent=2))
    return buffer.getvalue()
