"""The Celery application for EXECUTOR=celery. Building it has no other effect: worker.py
registers the task that runs phases, and API processes only send to it by name."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

from delivery.settings import Settings
from delivery.tasks.records import TaskPriority

# Queued phases start by priority (then arrival). Redis (kombu) keeps a list per step of
# 0, 3, 6, 9 and pops the lowest number first; RabbitMQ delivers the highest number first from a
# queue declared with x-max-priority (task_queue_max_priority below).
_REDIS_PRIORITY = {TaskPriority.high: 0, TaskPriority.normal: 3, TaskPriority.low: 6}
_AMQP_PRIORITY = {TaskPriority.high: 2, TaskPriority.normal: 1, TaskPriority.low: 0}


def broker_priority(app: Celery, priority: TaskPriority) -> int:
    """The message priority that makes `app`'s broker deliver `priority` in its place."""
    scheme = urlsplit(str(app.conf.broker_url)).scheme
    return (_AMQP_PRIORITY if scheme.startswith(("amqp", "pyamqp")) else _REDIS_PRIORITY)[priority]


def make_celery(settings: Settings) -> Celery:
    app = Celery("worker", broker=settings.celery_broker_url or settings.redis_url)
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_queue_max_priority=max(_AMQP_PRIORITY.values()),  # RabbitMQ only; Redis ignores it
        # A message is acknowledged when its phase ends, and a worker reserves no more messages
        # than it has threads: so a worker killed with phases waiting for a thread loses none of
        # them (they stay in the broker for the next worker). A phase that had started is taken
        # over by the lease reaper (TASK_LEASE_S), not by redelivery, which comes only after the
        # broker's visibility timeout (an hour) and is then dropped as stale (its attempt moved
        # on) or as a duplicate (store.claim_phase).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A broker restart does not stop running crews (their events wait in the writer's outbox).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    return app
