"""The task lifecycle assembled in process, with the scripted double and a manual executor, so a
test decides exactly when each phase runs and can step in at a chosen point: races become
sequences, with no sleeps and no threads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crew_factory import CrewEventsHandler
from delivery.events import TERMINAL_EVENT_TYPES, Event
from delivery.llm.providers import make_llm_factory, usage_policy
from delivery.settings import Settings
from delivery.streaming.memory import MemoryEventBackend
from delivery.tasks.commands import TaskCommands
from delivery.tasks.executors import Executor
from delivery.tasks.phases import PhaseRunner
from delivery.tasks.records import Phase, TaskPriority, TaskRecord
from delivery.tasks.runs import Runs
from delivery.tasks.store import TaskStore
from delivery.tasks.watchdog import Watchdog
from delivery.webhooks.outbox import Webhooks
from stream_manager import StreamManager


class ManualExecutor(Executor):
    """Queues dispatched phases; the test runs them (on its own thread) when it chooses. With
    `local=False` it stands for a broker: another process's phases take them from the queue."""

    def __init__(self, local: bool = True) -> None:
        self.local = local
        self.queue: list[tuple[str, Phase, int]] = []
        self.priorities: dict[str, TaskPriority] = {}

    def dispatch(self, task_id: str, phase: Phase, attempt: int, priority: TaskPriority) -> None:
        self.queue.append((task_id, phase, attempt))
        self.priorities[task_id] = priority


class HookedStore(TaskStore):
    """A real SQLite store that runs a one-shot hook right before or after a chosen call."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.before: dict[str, Callable[[], object]] = {}
        self.after: dict[str, Callable[[], object]] = {}

    @staticmethod
    def _run(hooks: dict[str, Callable[[], object]], name: str) -> None:
        hook = hooks.pop(name, None)
        if hook is not None:
            hook()

    def transition(self, record: TaskRecord, expected: Any, *, fenced: bool = False) -> bool:
        self._run(self.before, "transition")
        result = super().transition(record, expected, fenced=fenced)
        self._run(self.after, "transition")
        return result


def handler_stepping_in(after_step_of: str, action: Callable[[], None]) -> type[CrewEventsHandler]:
    """A handler that runs `action` once, right after `after_step_of`'s step_end is published:
    the crew has finished that agent, and the phase has not yet decided how it ends."""
    done = False

    class SteppingIn(CrewEventsHandler):
        def on_step_end(self, agent_name: str, completed: int, total: int) -> None:
            nonlocal done
            super().on_step_end(agent_name, completed, total)
            if agent_name == after_step_of and not done:
                done = True
                action()

    return SteppingIn


class Lifecycle:
    """One process's lifecycle units (as delivery.runtime.Runtime wires them)."""

    def __init__(
        self,
        folder: Path,
        *,
        name: str = "here",
        handler_class: type[CrewEventsHandler] = CrewEventsHandler,
        shared_with: Lifecycle | None = None,
        local_executor: bool = True,
        **settings: Any,
    ) -> None:
        self.settings = Settings(_env_file=None, **{"llm_provider": "scripted", **settings})
        self.store: HookedStore
        self.streams: StreamManager
        if shared_with is not None:  # another process on the same store and event streams
            self.store, self.streams = shared_with.store, shared_with.streams
        else:
            self.store = HookedStore(f"sqlite:///{folder / 'tasks.db'}")
            self.streams = StreamManager(MemoryEventBackend(), self.store)
        self.runs = Runs(self.settings, self.store, self.streams, name, Webhooks(self.settings, self.store))
        self.phases = PhaseRunner(
            self.runs,
            make_llm_factory(self.settings),
            handler_class,
            "scripted:test-double",
            usage_policy(self.settings),
        )
        self.executor = ManualExecutor(local_executor)
        self.commands = TaskCommands(self.runs, self.executor)
        self.watchdog = Watchdog(self.runs, self.commands.resume)

    def run_next(self) -> Phase:
        task_id, phase, attempt = self.executor.queue.pop(0)
        self.phases.run(task_id, phase, attempt)
        return phase

    def log(self, task_id: str) -> list[Event]:
        return self.streams.events(task_id)

    def types(self, task_id: str) -> list[str]:
        return [e.event_type for e in self.log(task_id)]

    def terminal_events(self, task_id: str) -> list[Event]:
        return [e for e in self.log(task_id) if e.event_type in TERMINAL_EVENT_TYPES]

    def close(self) -> None:
        self.streams.close()
        self.store.close()
