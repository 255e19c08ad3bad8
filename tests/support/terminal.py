"""The `delivery` CLI run as a person runs it (under a pseudo-terminal, with pexpect) and as a
script runs it (plain pipes), against a server URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TextIO, cast

import pexpect

DELIVERY = str(Path(sys.executable).with_name("delivery"))  # the console entry point make install puts there
FILES = ["DELIVERY_REVIEW.md", "REQUIREMENTS.md", "TECH_DESIGN.md", "TEST_PLAN.md"]  # a package, sorted


def environment(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    return {**env, "DELIVERY_URL": url, "TERM": "xterm-256color", **extra}


def terminal(url: str, *args: str, cwd: Path, **extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        DELIVERY,
        list(args),
        env=environment(url, **extra),
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    # Everything the person saw, kept for finish() and for reading a failure.
    child.logfile_read = open(cwd / f"terminal-{child.pid}.log", "w")  # noqa: SIM115 - closed in finish()
    return child


def finish(child: pexpect.spawn) -> int:
    """Wait for the CLI to exit; its exit status. Whatever happened, no traceback was shown."""
    child.expect(pexpect.EOF)
    child.close()
    log = cast(TextIO, child.logfile_read)  # the file terminal() opened
    log.close()
    assert "Traceback" not in Path(log.name).read_text()
    assert child.exitstatus is not None
    return child.exitstatus


def task_id_of(child: pexpect.spawn) -> str:
    child.expect(r"Started task ([0-9a-f-]{36})")
    match = child.match
    assert match is not None and not isinstance(match, type)
    return str(match.group(1))


def script(url: str, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DELIVERY, *args],
        check=False,
        env=environment(url, **extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
