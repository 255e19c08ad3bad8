"""Who a process is, as the owner of the tasks it runs (INSTANCE_ID), and whether an owner on
this host has exited.

The default id is `<host>:<pid>:<tag>`, where the tag names this boot of this machine's kernel and
this process's PID namespace (a random tag where the system does not say). No two processes that
live at once share it, however they were started (`uvicorn --port`, `--workers`, containers): an
id taken from the configured PORT was shared by replicas started with `uvicorn --port` on one
host, and a restart of one then took over the other's live tasks as its own.

A process that was killed (`kill -9`, OOM) leaves tasks owned by an id no process will have
again. Any process on the same host and PID namespace sees at its next lease pass that the pid is
gone (`exited`) and resumes them at once; elsewhere they are resumed when their lease runs out
(TASK_LEASE_S). A pid reused since is taken for alive: the lease decides then, never a guess.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from functools import lru_cache
from pathlib import Path

from delivery.settings import Settings

MAX_HOST_CHARS = 120  # the store keeps 200 characters of an owner


def instance_id(settings: Settings) -> str:
    """INSTANCE_ID when set (it must then be unique per process), else this process's own."""
    return settings.instance_id or f"{_host()}:{os.getpid()}:{_local_tag()}"


def exited(owner: str) -> bool:
    """The owner is a default id of a process on this host, in this PID namespace and this boot,
    and that process no longer runs. False whenever that cannot be known for sure."""
    host, _, rest = owner.partition(":")
    pid, _, tag = rest.partition(":")
    if host != _host() or tag != _local_tag() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not _running(int(pid))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: it runs nothing
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@lru_cache(maxsize=1)
def _host() -> str:
    return socket.gethostname()[:MAX_HOST_CHARS] or "localhost"


@lru_cache(maxsize=1)
def _local_tag() -> str:
    """The same for every process of this kernel boot and PID namespace, and only for them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: a tag no other process has, so `exited` never guesses
        return uuid.uuid4().hex[:10]
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:10]
