"""Process identity: the default INSTANCE_ID is unique per process whatever PORT says, and a
process on this host that exited is known to have exited (its tasks need not wait for a lease)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from delivery.settings import Settings
from delivery.tasks.instances import _host, _local_tag, exited, instance_id
from delivery.tasks.records import Phase, TaskStatus
from delivery.tasks.watchdog import EXITED_OWNER
from tests.support.lifecycle import Lifecycle
from tests.support.waiting import wait_for

ID_OF_A_PROCESS = (
    "from delivery.settings import Settings; from delivery.tasks.instances import instance_id; "
    "print(instance_id(Settings(_env_file=None, port=8000)))"
)


def test_processes_configured_alike_get_different_ids_and_a_set_one_is_kept():
    ids = {
        subprocess.run([sys.executable, "-c", ID_OF_A_PROCESS], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(ids) == 2  # same host, same PORT: two ids
    assert all(i.strip().startswith(f"{_host()}:") and ":8000" not in i for i in ids)
    assert instance_id(Settings(_env_file=None, instance_id="api-1")) == "api-1"


def _owner(pid: int) -> str:
    return f"{_host()}:{pid}:{_local_tag()}"


def test_an_owner_on_this_host_has_exited_once_its_process_is_gone_or_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not exited(_owner(child.pid))
        child.kill()  # not yet reaped by its parent (this test): a zombie once it died
        wait_for(lambda: exited(_owner(child.pid)), 5, message="the killed child to be taken for exited")
    finally:
        child.kill()
        child.wait()
    assert exited(_owner(child.pid))  # reaped: no such process


def test_owners_that_cannot_be_checked_here_are_never_taken_for_exited():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = child.pid
    assert not exited(f"another-host:{dead}:{_local_tag()}")  # its /proc is not ours
    assert not exited(f"{_host()}:{dead}:0123456789")  # another boot or PID namespace
    assert not exited(f"worker-{_host()}-{dead}")  # not a default id: only its lease tells
    assert not exited("api-1")
    assert not exited(instance_id(Settings(_env_file=None)))  # this process


def test_a_task_of_a_process_that_exited_on_this_host_is_resumed_at_the_next_pass(tmp_path: Path):
    """Its lease has not run out, but its process is gone: no need to wait TASK_LEASE_S."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = _owner(child.pid)
    owner = Lifecycle(tmp_path, name=gone)
    other = Lifecycle(tmp_path, name=instance_id(Settings(_env_file=None)), shared_with=owner)
    try:
        task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
        held = owner.runs.get(task_id)
        assert held is not None
        owner.runs.release(held)  # the process is gone, its heartbeat fresh
        assert other.watchdog.reap_lost(time.time()) == [task_id]
        assert other.run_next() is Phase.analysis
        assert other.store.get(task_id).status is TaskStatus.succeeded
        resumed = next(e for e in other.log(task_id) if e.event_type == "resumed")
        assert (resumed.metadata or {})["lost"] == EXITED_OWNER.format(owner=gone)
    finally:
        owner.close()
