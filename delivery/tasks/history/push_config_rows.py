"""A2A push-notification configs: where each task's updates are pushed (delivery/api/a2a_push.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlalchemy import delete, select

from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import push_configs_table


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
    def save_push_config(self, config: PushConfig) -> None:
        t = push_configs_table
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.task_id == config.task_id, t.c.config_id == config.config_id))
            conn.execute(t.insert().values(**asdict(config)))

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
