"""The parts of the task history (`delivery.tasks.store.TaskStore`), one per table, all on one
engine (`database.Database`)."""
