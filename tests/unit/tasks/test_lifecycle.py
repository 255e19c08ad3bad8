"""The task lifecycle in process: each race of delivery/tasks/runs.py played in both orders, at
the exact point where the two sides meet. Every outcome has one terminal event that matches the
final status."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.errors import ServiceUnavailableError, TaskStateConflictError
from delivery.tasks.phases import PhaseNotStartedError
from delivery.tasks.records import Phase, TaskPriority, TaskStatus
from delivery.tasks.store import HANDED_BACK_AT
from delivery.tasks.watchdog import HANDED_BACK, LOST_OWNER
from tests.support.lifecycle import Lifecycle, handler_stepping_in
from tests.support.waiting import wait_for

LATER = 10**6  # seconds: "now" for a watchdog pass long after every deadline and lease


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Lifecycle]]:
    built: list[Lifecycle] = []
    yield built
    for lifecycle in built:
        if lifecycle.streams is not None and not any(
            o is not lifecycle and o.streams is lifecycle.streams for o in built[: built.index(lifecycle)]
        ):
            lifecycle.close()


def lifecycle(made: list[Lifecycle], folder: Path, **kw) -> Lifecycle:
    lc = Lifecycle(folder, **kw)
    made.append(lc)
    return lc


def waiting_task(lc: Lifecycle) -> str:
    """A task whose analysis is done and which awaits confirmation."""
    record = lc.commands.submit("Build a wiki with search", skip_confirmation=False)
    assert lc.run_next() is Phase.analysis
    assert lc.store.get(record.task_id).status is TaskStatus.awaiting_confirmation
    return record.task_id


def assert_one_ending(lc: Lifecycle, task_id: str, event_type: str, status: TaskStatus) -> None:
    assert [e.event_type for e in lc.terminal_events(task_id)] == [event_type]
    assert lc.types(task_id)[-1] == event_type
    assert lc.store.get(task_id).status is status
    assert lc.runs.get(task_id) is None  # this process holds nothing for it any more
    sequences = [e.sequence for e in lc.log(task_id)]
    assert sequences == list(range(1, len(sequences) + 1))


# -- confirm vs cancel --------------------------------------------------------------------------


def test_cancel_between_confirms_decision_and_its_event_wins_and_confirm_answers_409(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = waiting_task(lc)
    lc.store.after["transition"] = lambda: lc.commands.cancel(task_id)
    with pytest.raises(TaskStateConflictError, match="cancelled"):
        lc.commands.confirm(task_id, approved=True, feedback=None)
    assert "confirmed" not in lc.types(task_id)
    assert lc.executor.queue == []  # no phase was dispatched for the lost confirm
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)


def test_cancel_after_confirm_stops_the_queued_phase_before_it_starts(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = waiting_task(lc)
    lc.commands.confirm(task_id, approved=True, feedback=None)
    assert lc.executor.queue == [(task_id, Phase.delivery, 1)]
    lc.commands.cancel(task_id)
    agents_before = lc.types(task_id).count("agent_start")
    lc.run_next()  # the queued delivery phase finds its task ended and runs no agent
    assert lc.types(task_id).count("agent_start") == agents_before
    assert lc.types(task_id)[-2:] == ["confirmed", "cancelled"]
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)


def test_of_two_answers_at_once_only_the_first_decision_counts(made, tmp_path):
    """Both answers saw the task waiting; the store takes one transition, the other gets 409."""
    lc = lifecycle(made, tmp_path)
    task_id = waiting_task(lc)
    lc.store.before["transition"] = lambda: lc.commands.confirm(task_id, approved=True, feedback=None)
    with pytest.raises(TaskStateConflictError, match="is running"):
        lc.commands.confirm(task_id, approved=False, feedback="add export")
    assert lc.types(task_id).count("confirmed") == 1
    assert lc.executor.queue == [(task_id, Phase.delivery, 1)]
    assert lc.store.get(task_id).feedback == []  # the losing answer left no trace
    lc.run_next()
    assert_one_ending(lc, task_id, "end", TaskStatus.succeeded)


def test_confirm_after_cancel_is_refused(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = waiting_task(lc)
    lc.commands.cancel(task_id)
    with pytest.raises(TaskStateConflictError, match="is cancelled"):
        lc.commands.confirm(task_id, approved=True, feedback=None)
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)


# -- timeout vs finish ----------------------------------------------------------------------------


def test_a_timeout_after_the_last_agent_but_before_the_end_wins_once(made, tmp_path):
    holder: list[Lifecycle] = []
    handler = handler_stepping_in("Coordinator", lambda: holder[0].watchdog.check_deadlines(time.time() + LATER))
    lc = lifecycle(made, tmp_path, handler_class=handler)
    holder.append(lc)
    task_id = lc.commands.submit("Build a payroll system", skip_confirmation=True).task_id
    lc.run_next()
    assert "end" not in lc.types(task_id)
    assert_one_ending(lc, task_id, "error", TaskStatus.failed)
    assert "TASK_TIMEOUT_S" in (lc.store.get(task_id).error or "")


def test_a_watchdog_pass_after_the_end_changes_nothing(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = lc.commands.submit("Build a payroll system", skip_confirmation=True).task_id
    lc.run_next()
    log = lc.log(task_id)
    lc.watchdog.check_deadlines(time.time() + LATER)
    assert lc.log(task_id) == log
    assert_one_ending(lc, task_id, "end", TaskStatus.succeeded)


# -- reaper vs finish -----------------------------------------------------------------------------


def test_a_reaper_taking_over_a_live_owner_fences_it_off_and_resumes_once(made, tmp_path):
    """Another process sees the owner's lease expired (say it was cut off) just after the
    QAEngineer finished: the reaper takes the phase over as attempt 2; the owner, still alive,
    can write nothing more (its next save is refused), and the reaper goes on with the
    SoftwareDeveloper. One ending, no agent's work twice."""
    holder: list[Lifecycle] = []

    def reap() -> None:
        assert holder[0].watchdog.reap_lost(time.time() + LATER) == [task_id]

    handler = handler_stepping_in("QAEngineer", reap)
    owner = lifecycle(made, tmp_path, name="owner", handler_class=handler)
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    holder.append(reaper)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    owner.run_next()  # the owner's crew stops at its first event after the take-over
    types = owner.types(task_id)
    assert types[-1] == "resumed" and "error" not in types and "end" not in types
    stored = owner.store.get(task_id)
    assert (stored.status, stored.owner, stored.attempts) == (TaskStatus.queued, "reaper", 2)
    held = reaper.runs.get(task_id)
    assert held is not None and held.active_before == stored.run_seconds > 0  # the timeout counts the lost work
    assert reaper.run_next() is Phase.delivery
    assert_one_ending(reaper, task_id, "end", TaskStatus.succeeded)
    starts = [e.agent_name for e in reaper.log(task_id) if e.event_type == "agent_start"]
    assert starts == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    resumed = next(e for e in reaper.log(task_id) if e.event_type == "resumed")
    assert resumed.metadata == {
        "lost": LOST_OWNER.format(owner="owner", lease=owner.settings.task_lease_s),
        "agent": "SoftwareDeveloper",
        "attempt": 2,
        "max_attempts": 3,
        "handed_back": False,
    }


def test_an_analysis_lost_after_it_was_finished_is_not_written_again(made, tmp_path):
    """The owner is lost between the ProductManager's step_end and the pause for confirmation:
    the resumed phase pauses with the stored analysis instead of running the agent again."""
    holder: list[Lifecycle] = []

    def reap() -> None:
        assert holder[0].watchdog.reap_lost(time.time() + LATER) == [task_id]

    owner = lifecycle(made, tmp_path, name="owner", handler_class=handler_stepping_in("ProductManager", reap))
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    holder.append(reaper)
    task_id = owner.commands.submit("Build a wiki with search", skip_confirmation=False).task_id
    owner.run_next()  # its pause is refused: the task was taken over
    assert reaper.run_next() is Phase.analysis
    stored = reaper.store.get(task_id)
    assert stored.status is TaskStatus.awaiting_confirmation and stored.attempts == 2
    types = reaper.types(task_id)
    assert types.count("agent_start") == 1 and types.count("step_end") == 1
    assert types[-2:] == ["resumed", "awaiting_confirmation"]
    resumed = next(e for e in reaper.log(task_id) if e.event_type == "resumed")
    assert (resumed.metadata or {})["agent"].startswith("the confirmation")
    waiting = reaper.log(task_id)[-1]
    assert stored.deliverables["requirements_analysis"] in waiting.content
    reaper.commands.confirm(task_id, approved=True, feedback=None)
    reaper.run_next()
    assert_one_ending(reaper, task_id, "end", TaskStatus.succeeded)


def test_a_process_whose_lease_ran_out_stops_its_crew_and_another_resumes_it(made, tmp_path):
    """Rule 5: a process that could not renew its lease stops its crews before anyone may take
    them over; the heartbeat it manages later tells it which runs were taken."""
    owner = lifecycle(made, tmp_path, name="owner")
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    owner.runs.lease_until = 0.0  # its last heartbeat is too old
    owner.run_next()
    assert owner.types(task_id) == ["start"]  # its crew stopped at its first event
    assert owner.store.get(task_id).status is TaskStatus.running
    assert reaper.watchdog.reap_lost(time.time() + LATER) == [task_id]
    reaper.run_next()
    assert_one_ending(reaper, task_id, "end", TaskStatus.succeeded)
    assert reaper.types(task_id)[:3] == ["start", "resumed", "agent_start"]


def test_a_heartbeat_stops_the_runs_another_process_took_over(made, tmp_path):
    owner = lifecycle(made, tmp_path, name="owner")
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    run = owner.runs.get(task_id)
    assert run is not None
    assert reaper.watchdog.reap_lost(time.time() + LATER) == [task_id]
    owner.watchdog.heartbeat(time.time())
    assert run.aborted.is_set() and owner.runs.get(task_id) is None
    assert owner.store.get(task_id).owner == "reaper"  # the heartbeat did not take it back


def test_a_cancel_while_the_owner_is_lost_wins_over_recovery(made, tmp_path):
    owner = lifecycle(made, tmp_path, name="owner")
    api = lifecycle(made, tmp_path, name="api", shared_with=owner)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    held = owner.runs.get(task_id)
    assert held is not None
    owner.runs.release(held)  # its process is gone; its lease has not run out yet
    api.commands.cancel(task_id)
    assert api.watchdog.reap_lost(time.time() + LATER) == []
    assert api.executor.queue == []  # nothing was dispatched again
    assert_one_ending(api, task_id, "cancelled", TaskStatus.cancelled)


def test_a_phase_past_max_phase_attempts_fails_saying_so(made, tmp_path):
    owner = lifecycle(made, tmp_path, name="owner", max_phase_attempts=1)
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner, max_phase_attempts=1)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    held = owner.runs.get(task_id)
    assert held is not None
    owner.runs.release(held)  # its process is gone
    assert reaper.watchdog.reap_lost(time.time() + LATER) == [task_id]
    assert_one_ending(reaper, task_id, "error", TaskStatus.failed)
    assert "MAX_PHASE_ATTEMPTS=1" in (reaper.store.get(task_id).error or "")


def test_a_stale_or_duplicate_celery_message_runs_nothing(made, tmp_path):
    """With Celery a message can come back (the broker's visibility timeout): dropped when its
    attempt is over, and refused by the store when another worker already runs that attempt."""
    api = lifecycle(made, tmp_path, name="api", local_executor=False)
    worker = lifecycle(made, tmp_path, name="worker", shared_with=api)
    other = lifecycle(made, tmp_path, name="other", shared_with=api)
    task_id = api.commands.submit("Build a wiki with search", skip_confirmation=True).task_id
    message = api.executor.queue.pop(0)
    assert message == (task_id, Phase.analysis, 1)
    record = worker.store.get(task_id)
    record.owner = "worker"
    assert worker.store.claim_phase(record)  # the first worker has started it
    other.phases.run(*message)  # the duplicate
    assert other.types(task_id) == [] and worker.store.get(task_id).owner == "worker"
    assert api.watchdog.reap_lost(time.time() + LATER) == [task_id]  # "worker" is lost: attempt 2
    other.phases.run(*message)  # attempt 1's message, redelivered: stale
    assert other.types(task_id) == ["resumed"]
    other.phases.run(*api.executor.queue.pop(0))
    assert_one_ending(other, task_id, "end", TaskStatus.succeeded)


def test_a_message_for_a_task_the_store_does_not_have_is_dropped_not_requeued(made, tmp_path, caplog):
    """A broker shared with another deployment, or a task purged since: such a message can never
    run. It is dropped (the worker acknowledges it) instead of going back to the queue forever,
    which kept a one-thread worker cycling it while real tasks waited."""
    worker = lifecycle(made, tmp_path, name="worker", local_executor=False)
    worker.phases.run("0f6c1c56-0000-4000-8000-000000000000", Phase.analysis, 1)  # returns: nothing raised
    assert "dropped a message for a task the store does not have" in caplog.text


def test_a_reaper_after_the_owner_finished_finds_nothing_to_reap(made, tmp_path):
    owner = lifecycle(made, tmp_path, name="owner")
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    owner.run_next()
    assert reaper.watchdog.reap_lost(time.time() + LATER) == []
    assert_one_ending(owner, task_id, "end", TaskStatus.succeeded)


def test_a_confirmed_phase_waiting_in_the_broker_is_not_reaped_as_lost(made, tmp_path):
    """With Celery the API holds nothing: after confirmation the phase waits in the broker, and
    the worker that ran the analysis (long ago) must not look like a lost owner meanwhile."""
    api = lifecycle(made, tmp_path, name="api", local_executor=False)
    worker = lifecycle(made, tmp_path, name="worker", shared_with=api)
    task_id = api.commands.submit("Build a wiki with search", skip_confirmation=False).task_id
    worker.phases.run(*api.executor.queue.pop(0))
    assert api.store.get(task_id).status is TaskStatus.awaiting_confirmation
    api.commands.confirm(task_id, approved=True, feedback=None)
    stored = api.store.get(task_id)
    assert stored.owner is None and stored.heartbeat_at is not None  # queued: nobody runs it yet
    assert api.watchdog.reap_lost(time.time() + api.settings.task_lease_s + 1) == []
    worker.phases.run(*api.executor.queue.pop(0))
    assert_one_ending(worker, task_id, "end", TaskStatus.succeeded)


def test_a_phase_whose_message_no_worker_took_up_is_dispatched_again_after_the_task_timeout(made, tmp_path):
    api = lifecycle(made, tmp_path, name="api", local_executor=False, task_timeout_s=60)
    worker = lifecycle(made, tmp_path, name="worker", shared_with=api)
    task_id = api.commands.submit("Build a wiki with search", skip_confirmation=True).task_id
    lost_message = api.executor.queue.pop(0)  # it never reaches a worker
    assert api.watchdog.reap_lost(time.time() + 59) == []  # it may just be waiting in a long queue
    assert api.watchdog.reap_lost(time.time() + 61) == [task_id]
    assert api.executor.queue == [(task_id, Phase.analysis, 2)]
    worker.phases.run(*lost_message)  # should it turn up after all: stale
    worker.phases.run(*api.executor.queue.pop(0))
    assert_one_ending(worker, task_id, "end", TaskStatus.succeeded)
    resumed = next(e for e in worker.log(task_id) if e.event_type == "resumed")
    assert "TASK_TIMEOUT_S=60" in resumed.content


def test_a_process_does_not_reap_the_runs_it_holds(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = lc.commands.submit("Build a parking app", skip_confirmation=True).task_id  # queued, held here
    assert lc.watchdog.reap_lost(time.time() + LATER) == []
    lc.run_next()
    assert_one_ending(lc, task_id, "end", TaskStatus.succeeded)


# -- a graceful stop (hand-back) vs the crew ---------------------------------------------------------


def test_a_stopping_process_stops_its_crew_between_agents_and_another_resumes_it_at_once(made, tmp_path):
    """SIGTERM while the QAEngineer has just finished: the crew stops at its next event, the task
    stays running (no terminal event), and another process resumes it at its very next lease pass
    (no lease to wait out) from the SoftwareDeveloper, with no attempt used up: MAX_PHASE_ATTEMPTS=1."""
    handed: list[str] = []
    holder: list[Lifecycle] = []
    stopping: list[threading.Thread] = []

    def stop_the_process() -> None:  # on the crew's thread, as SIGTERM arrives
        owner = holder[0]
        stopping.append(threading.Thread(target=lambda: handed.extend(owner.phases.hand_back(grace_s=10))))
        stopping[0].start()
        run = owner.runs.get(task_id)
        assert run is not None
        wait_for(run.aborted.is_set, 5, message="the hand-back to abort the crew")

    owner = lifecycle(
        made,
        tmp_path,
        name="owner",
        max_phase_attempts=1,
        handler_class=handler_stepping_in("QAEngineer", stop_the_process),
    )
    holder.append(owner)
    nxt = lifecycle(made, tmp_path, name="next", shared_with=owner, max_phase_attempts=1)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    owner.run_next()  # returns once the crew stopped at its first event after the step_end
    stopping[0].join(10)
    assert handed == [task_id]
    types = owner.types(task_id)
    assert types[-1] == "step_end" and not owner.terminal_events(task_id)
    stored = owner.store.get(task_id)
    assert (stored.status, stored.owner, stored.attempts, stored.completed_steps) == (TaskStatus.running, "owner", 1, 2)
    assert stored.heartbeat_at == HANDED_BACK_AT
    assert owner.runs.get(task_id) is None

    assert nxt.watchdog.reap_lost(time.time()) == [task_id]  # now, not a lease later
    assert nxt.run_next() is Phase.delivery
    assert_one_ending(nxt, task_id, "end", TaskStatus.succeeded)
    starts = [e.agent_name for e in nxt.log(task_id) if e.event_type == "agent_start"]
    assert starts == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    resumed = next(e for e in nxt.log(task_id) if e.event_type == "resumed")
    assert resumed.metadata == {
        "lost": HANDED_BACK.format(owner="owner"),
        "agent": "SoftwareDeveloper",
        "attempt": 2,
        "max_attempts": 1,
        "handed_back": True,
    }
    assert resumed.content.startswith(f"{HANDED_BACK.format(owner='owner')}; SoftwareDeveloper starts again")


def test_a_stopping_process_starts_no_queued_phase_and_its_restart_resumes_them(made, tmp_path):
    """Queued phases stay queued: none starts once the process stops (a Celery message goes back
    to the broker), and the same instance, restarted, takes each up again."""
    owner = lifecycle(made, tmp_path, name="owner")
    first = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    second = owner.commands.submit("Build a diary", skip_confirmation=True).task_id
    assert sorted(owner.phases.hand_back(grace_s=1)) == sorted([first, second])
    task_id, phase, attempt = owner.executor.queue.pop(0)
    with pytest.raises(PhaseNotStartedError, match="this process is stopping"):
        owner.phases.run(task_id, phase, attempt)
    assert owner.types(first) == [] and owner.store.get(first).status is TaskStatus.queued

    restarted = lifecycle(made, tmp_path, name="owner", shared_with=owner)
    assert sorted(restarted.watchdog.recover_at_start()) == sorted([first, second])
    for _ in range(2):
        restarted.run_next()
    for task_id in (first, second):
        assert_one_ending(restarted, task_id, "end", TaskStatus.succeeded)
        assert restarted.types(task_id)[:2] == ["resumed", "start"]


def test_a_hand_back_leaves_tasks_of_other_processes_and_finished_ones_alone(made, tmp_path):
    owner = lifecycle(made, tmp_path, name="owner")
    other = lifecycle(made, tmp_path, name="other", shared_with=owner)
    mine = owner.commands.submit("Build a parking app", skip_confirmation=True).task_id
    theirs = other.commands.submit("Build a diary", skip_confirmation=True).task_id
    done = owner.commands.submit("Build a wiki", skip_confirmation=True).task_id
    owner.commands.cancel(done)
    assert owner.phases.hand_back(grace_s=1) == [mine]
    assert other.store.get(theirs).heartbeat_at != HANDED_BACK_AT
    assert other.store.get(done).status is TaskStatus.cancelled


def test_a_long_reaping_pass_keeps_renewing_this_processs_own_lease(made, tmp_path, monkeypatch):
    """Resuming many handed-back tasks takes a few writes each: a pass that outlasts a third of
    the lease renews this process's own lease on the way, so its own crews are not stopped as if
    it had been cut off (seen in the compose rolling restart with a short TASK_LEASE_S)."""
    owner = lifecycle(made, tmp_path, name="owner", event_backend="redis", task_lease_s=3)
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner, event_backend="redis", task_lease_s=3)
    lost = [owner.commands.submit(f"Build app {i}", skip_confirmation=True).task_id for i in range(3)]
    assert sorted(owner.phases.hand_back(grace_s=1)) == sorted(lost)
    clock = iter(range(0, 1000, 2))  # each look at the clock: 2 s later, past lease/3
    monkeypatch.setattr("delivery.tasks.watchdog.time.monotonic", lambda: float(next(clock)))
    reaper.runs.lease_until = 0.0  # its lease as if it ran out during the pass
    assert sorted(reaper.watchdog.reap_lost(time.time())) == sorted(lost)
    assert reaper.runs.lease_until > time.time()  # renewed during the pass


# -- a request that fails half-way ---------------------------------------------------------------------


def _broker_down(exc: Exception = ConnectionRefusedError("Connection refused")):
    def dispatch(*_: object) -> None:
        raise exc

    return dispatch


def test_a_submission_whose_phase_cannot_be_dispatched_is_ended_not_left_to_run_later(made, tmp_path):
    """The task was saved and its log opened, then the broker refused its first phase: the
    client is told 503 (what failed, what to do) and the task is ended at once with its error
    event, so no reaper starts it later beside the client's retry. No webhook: the client was
    never given its id."""
    lc = lifecycle(made, tmp_path, local_executor=False, webhook_secret="whsec_" + "A" * 44, webhook_allow_private=True)
    lc.executor.dispatch = _broker_down()  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailableError) as refused:
        lc.commands.submit("Build a parking app", skip_confirmation=True, webhook_url="http://127.0.0.1:9/hook")
    message = str(refused.value)
    assert message.startswith("The task could not be started: the task queue (the Celery broker) failed (")
    assert "Retry in a few seconds, with the same Idempotency-Key" in message and refused.value.retry_after_s == 5
    [record] = lc.store.list_tasks(None, 10, None)
    assert record.status is TaskStatus.failed and record.error is not None
    assert record.error.startswith("Not started: the task queue (the Celery broker) failed (ConnectionRefusedError)")
    assert_one_ending(lc, record.task_id, "error", TaskStatus.failed)
    assert lc.types(record.task_id) == ["error"]
    assert lc.watchdog.reap_lost(time.time() + LATER) == []  # nothing left to run, ever
    assert lc.store.webhooks(record.task_id) == []


def test_a_submission_whose_log_cannot_be_opened_is_ended_and_its_log_says_so_when_read(made, tmp_path):
    """Redis failed as the task's log was opened: the task is ended without waiting on Redis
    again; the first reader of its log (or the watchdog's repair) gets the error event from the
    record."""
    lc = lifecycle(made, tmp_path)

    def redis_down(task_id: str) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    lc.streams.open = redis_down  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailableError, match=r"^The task could not be started: the event log failed \("):
        lc.commands.submit("Build a parking app", skip_confirmation=True)
    [record] = lc.store.list_tasks(None, 10, None)
    assert (record.status, lc.runs.get(record.task_id), lc.executor.queue) == (TaskStatus.failed, None, [])
    lc.streams.make_available(record.task_id)
    assert_one_ending(lc, record.task_id, "error", TaskStatus.failed)
    assert lc.log(record.task_id)[0].content == record.error


def test_a_confirmation_whose_phase_cannot_be_dispatched_is_undone_and_asked_again(made, tmp_path):
    """The broker refused the phase the answer started: the task awaits confirmation again as it
    was (same deadline, no feedback recorded), its log asks again saying why, the client is told
    503, and the retried answer goes through."""
    api = lifecycle(made, tmp_path, name="api", local_executor=False)
    worker = lifecycle(made, tmp_path, name="worker", shared_with=api)
    task_id = api.commands.submit("Build a wiki with search", skip_confirmation=False).task_id
    worker.phases.run(*api.executor.queue.pop(0))
    before = api.store.get(task_id)
    dispatch = api.executor.dispatch
    api.executor.dispatch = _broker_down()  # type: ignore[method-assign]
    with pytest.raises(ServiceUnavailableError, match=r"^Your answer could not be carried out: the task queue"):
        api.commands.confirm(task_id, approved=False, feedback="add tags")
    after = api.store.get(task_id)
    assert after == before  # every field as it was before the answer
    assert api.types(task_id)[-3:] == ["awaiting_confirmation", "confirmed", "awaiting_confirmation"]
    asked, again = api.log(task_id)[-3], api.log(task_id)[-1]
    assert again.content == asked.content
    assert again.metadata == {
        **(asked.metadata or {}),
        "not_applied": "The answer was undone: the task queue (the Celery broker) failed (ConnectionRefusedError).",
    }
    assert api.watchdog.reap_lost(time.time() + LATER) == []

    api.executor.dispatch = dispatch  # type: ignore[method-assign]
    api.commands.confirm(task_id, approved=True, feedback=None)
    worker.phases.run(*api.executor.queue.pop(0))
    assert_one_ending(worker, task_id, "end", TaskStatus.succeeded)
    assert api.types(task_id).count("confirmed") == 2 and api.store.get(task_id).feedback == []


def test_a_confirmation_whose_message_reached_a_worker_after_all_stands(made, tmp_path):
    """The broker took the message but the send still failed (its reply lost): a worker claims
    the phase before the answer could be undone, so the answer stands and the phase runs."""
    api = lifecycle(made, tmp_path, name="api", local_executor=False)
    worker = lifecycle(made, tmp_path, name="worker", shared_with=api)
    task_id = api.commands.submit("Build a wiki with search", skip_confirmation=False).task_id
    worker.phases.run(*api.executor.queue.pop(0))

    def delivered_but_failed(task_id: str, phase: Phase, attempt: int, _: TaskPriority) -> None:
        record = worker.store.get(task_id)
        record.owner = "worker"
        assert worker.store.claim_phase(record)  # the worker has taken it up
        raise TimeoutError("no reply from the broker")

    api.executor.dispatch = delivered_but_failed  # type: ignore[method-assign, assignment]
    confirmed = api.commands.confirm(task_id, approved=True, feedback=None)
    assert confirmed.status is TaskStatus.running
    stored = api.store.get(task_id)
    assert (stored.status, stored.owner, stored.phase) == (TaskStatus.running, "worker", Phase.delivery)
    assert api.types(task_id)[-1] == "confirmed"


# -- cancel vs the crew's own checkpoint -------------------------------------------------------------


def test_a_cancel_while_the_crew_saves_its_progress_still_ends_the_task_with_its_event(made, tmp_path):
    """One run, one writer (rule 3): the crew's thread is saving its checkpoint (the
    ProductManager's agent_start) when a cancel ends the run on another thread. Forced here in
    that order: the crew's save waits until the cancel has changed the record and reached its own
    save. Without the run's lock around the checkpoint, the crew's save copied the ending and
    landed first, the cancel's conditional save then found the task ended and published nothing:
    the cancel answered, the task was `cancelled`, and its viewers waited for an end that never
    came. With the lock the cancel waits for the checkpoint, then wins with its event."""
    lc = lifecycle(made, tmp_path)
    task_id = lc.commands.submit("Build a quiz app", skip_confirmation=True).task_id
    crew = threading.Thread(target=lc.run_next, name="crew")
    canceller = threading.Thread(target=lambda: lc.commands.cancel(task_id), name="cancel")
    cancel_saving, crew_saved = threading.Event(), threading.Event()
    checkpoint_to_interleave = [True]
    save = lc.store.save_unless_finished

    def interleaving_save(record):
        me = threading.current_thread()
        if me is crew and checkpoint_to_interleave and checkpoint_to_interleave.pop():
            canceller.start()
            # The cancel reaches its own save at once, unless it waits for the run's lock: then
            # this wait runs out (the one second the fixed code spends here).
            cancel_saving.wait(1.0)
            try:
                return save(record)
            finally:
                crew_saved.set()
        if me is canceller:
            cancel_saving.set()
            crew_saved.wait(5)
        return save(record)

    lc.store.save_unless_finished = interleaving_save  # type: ignore[method-assign]
    crew.start()
    crew.join(10)
    canceller.join(10)
    assert not crew.is_alive() and not canceller.is_alive()
    assert not checkpoint_to_interleave  # the crew did reach its checkpoint
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)


# -- cancel vs start -------------------------------------------------------------------------------


def test_a_task_cancelled_while_queued_never_starts(made, tmp_path):
    lc = lifecycle(made, tmp_path)
    task_id = lc.commands.submit("Build a quiz app", skip_confirmation=True).task_id
    lc.commands.cancel(task_id)
    lc.run_next()
    assert lc.types(task_id) == ["cancelled"]
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)


def test_a_confirmation_nobody_answers_is_cancelled_by_the_watchdog(made, tmp_path):
    lc = lifecycle(made, tmp_path, confirmation_timeout_s=60)
    task_id = waiting_task(lc)
    lc.watchdog.check_deadlines(time.time() + 30)
    assert lc.store.get(task_id).status is TaskStatus.awaiting_confirmation
    lc.watchdog.check_deadlines(time.time() + 61)
    assert_one_ending(lc, task_id, "cancelled", TaskStatus.cancelled)
    assert "CONFIRMATION_TIMEOUT_S=60s" in lc.log(task_id)[-1].content


def test_finished_tasks_past_their_retention_are_purged_with_their_events(made, tmp_path):
    lc = lifecycle(made, tmp_path, task_retention_days=1)
    task_id = lc.commands.submit("Build a quiz app", skip_confirmation=True).task_id
    lc.run_next()
    lc.streams.evict_expired(ttl_s=0)
    lc.watchdog.tick(time.time() + 3600)  # within a day: kept
    assert lc.store.get(task_id).status is TaskStatus.succeeded
    lc.watchdog = type(lc.watchdog)(lc.runs)  # a fresh schedule, so the next pass sweeps again
    lc.watchdog.tick(time.time() + 2 * 86400)
    assert lc.store.list_tasks(None, 10, None) == [] and lc.store.load_events(task_id) == []


def test_every_phase_of_a_task_is_dispatched_with_its_priority(made, tmp_path):
    """The priority is the task's: its analysis, each revision, its delivery and a resumed phase
    all wait in the queue at the same priority."""
    owner = lifecycle(made, tmp_path, name="owner")
    reaper = lifecycle(made, tmp_path, name="reaper", shared_with=owner)
    task_id = owner.commands.submit("Build a parking app", skip_confirmation=False, priority=TaskPriority.high).task_id
    assert owner.executor.priorities == {task_id: TaskPriority.high}
    owner.run_next()
    owner.executor.priorities.clear()
    owner.commands.confirm(task_id, approved=False, feedback="add monthly passes")
    assert owner.executor.priorities == {task_id: TaskPriority.high}
    owner.run_next()
    owner.executor.priorities.clear()
    owner.commands.confirm(task_id, approved=True, feedback=None)
    assert owner.executor.priorities == {task_id: TaskPriority.high}
    assert owner.store.get(task_id).priority is TaskPriority.high
    owner.executor.queue.clear()  # its process is lost before the delivery starts
    assert reaper.watchdog.reap_lost(time.time() + LATER) == [task_id]
    assert reaper.executor.priorities == {task_id: TaskPriority.high}
