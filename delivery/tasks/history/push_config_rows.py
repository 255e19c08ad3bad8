"""A2A push-notification configs: where each task's updates are pushed (delivery/api/a2a_push.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlalchemy import delete, func, select

from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import push_configs_table, tasks_table


@dataclass
class PushConfig:
    task_id: str
    config_id: str  # unique per task: a config saved with the id of another replaces it
    url: str
    created_at: float
    token: str | None = None  # sent back as X-A2A-Notification-Token, for the receiver to check
    auth_scheme: str | None = None  # with auth_credentials: an Authorization header the receiver asked for
    auth_credentials: str | None = None


class PushConfigRows(Database):
    """The `a2a_push_configs` table. Every call is safe to repeat (a save replaces by id)."""

    @until_reachable
    def save_push_config(self, config: PushConfig, limit: int) -> bool:
        """Save `config`, replacing the task's config of the same id (which keeps its place
        among the task's configs: its `created_at`); False (nothing saved) when the task
        already has `limit` others."""
        t = push_configs_table
        with self._write_lock, self.engine.begin() as conn:
            # The task's row lock (PostgreSQL; SQLite has one writer anyway) makes concurrent
            # saves on other replicas count one after the other.
            conn.execute(select(tasks_table.c.task_id).where(tasks_table.c.task_id == config.task_id).with_for_update())
            others = conn.execute(
                select(func.count())
                .select_from(t)
                .where(t.c.task_id == config.task_id, t.c.config_id != config.config_id)
            ).scalar_one()
            if others >= limit:
                return False
            same = (t.c.task_id == config.task_id, t.c.config_id == config.config_id)
            created_at = conn.execute(select(t.c.created_at).where(*same)).scalar_one_or_none()
            conn.execute(delete(t).where(*same))
            conn.execute(t.insert().values(**asdict(config) | {"created_at": created_at or config.created_at}))
        return True

    @until_reachable
    def push_configs(self, task_ids: Iterable[str]) -> dict[str, list[PushConfig]]:
        """The configs of each of `task_ids` that has any, oldest first."""
        t = push_configs_table
        wanted = sorted(set(task_ids))
        found: dict[str, list[PushConfig]] = {}
        if not wanted:
            return found
        query = select(t).where(t.c.task_id.in_(wanted)).order_by(t.c.created_at, t.c.config_id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found.setdefault(row.task_id, []).append(PushConfig(**row._mapping))
        return found

    @until_reachable
    def delete_push_config(self, task_id: str, config_id: str) -> bool:
        """False when the task had no config of that id."""
        t = push_configs_table
        with self._write_lock, self.engine.begin() as conn:
            gone = conn.execute(delete(t).where(t.c.task_id == task_id, t.c.config_id == config_id))
        return bool(gone.rowcount)
