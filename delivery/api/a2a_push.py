"""A2A push notifications, sent through the webhook outbox.

A client gives a task a push config (CreateTaskPushNotificationConfig, or SendMessage's
configuration.taskPushNotificationConfig); from then on every A2A update of the task — the same
ones SubscribeToTask streams: a status update per status change (working, input-required,
completed, failed, canceled; working again as each agent starts) and an artifact update per
document — is POSTed to the config's URL as the a2a-sdk's own push sender does (the update as a
StreamResponse JSON body, the config's token in X-A2A-Notification-Token, its authentication as
`Authorization: <scheme> <credentials>`). It goes as an outbox row: signed like every webhook,
retried with backoff, under the address rules and the per-attempt deadline, and kept for
GET /api/task/{id}/webhooks.

The rows are made where the events are made durable (`queue`, called by the event archiver of
whichever process published them, API or worker), so a push goes out for every event in the
log, whoever ran the task, and none for what was never stored. Each row's id is derived from
(task, config, event, update): making it twice (a config given while its task had begun, a batch
archived again) adds nothing, so each update reaches each config once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import replace

from a2a.server.events.event_queue import Event as A2aEvent
from a2a.types.a2a_pb2 import TaskPushNotificationConfig, TaskStatusUpdateEvent
from a2a.utils.errors import InvalidParamsError
from a2a.utils.proto_utils import to_stream_response
from google.protobuf.json_format import MessageToDict

from delivery.api.a2a_mapping import FINAL_STATES, Fold, final_updates
from delivery.events import Event, EventType
from delivery.settings import Settings
from delivery.tasks.store import PushConfig, TaskStore, WebhookDelivery
from delivery.webhooks.addresses import AddressNotAllowedError, check_url

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-A2A-Notification-Token"
MAX_CONFIG_ID_CHARS = 64
# Each config multiplies the task's pushes: a bound keeps one client from filling the outbox.
MAX_CONFIGS_PER_TASK = 10
MAX_SECRET_CHARS = 1024  # of a token, a scheme with its credentials
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_PAGE_TOKEN = re.compile(r"[0-9]{1,6}")  # what `page` gives (not str.isdigit: "²" is a digit to it)
# The events that make A2A updates (`Fold.apply`): a batch without any needs no look-up.
_PUSHED = frozenset(
    e.value
    for e in (
        EventType.start,
        EventType.agent_start,
        EventType.output,
        EventType.awaiting_confirmation,
        EventType.confirmed,
        EventType.resumed,
        EventType.end,
        EventType.error,
        EventType.cancelled,
    )
)
_ENDINGS = frozenset({EventType.end.value, EventType.error.value, EventType.cancelled.value})


class A2aPushes:
    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self._settings = settings
        self._store = store

    # -- configs --------------------------------------------------------------------------------

    def config_of(self, given: TaskPushNotificationConfig, task_id: str = "") -> PushConfig:
        """A config to store from what a client gave, or InvalidParamsError saying what to fix;
        `task_id` empty for a task not started yet (then `for_task` once it has an id).
        Blocking (the URL's host is resolved): call from a thread."""
        if task_id and given.task_id and given.task_id != task_id:
            raise InvalidParamsError(
                f"The push config names task {given.task_id}, not {task_id}; leave its taskId out."
            )
        if len(given.id) > MAX_CONFIG_ID_CHARS:
            raise InvalidParamsError(f"A push config id has at most {MAX_CONFIG_ID_CHARS} characters.")
        try:
            check_url(given.url, self._settings.webhook_allow_private)
        except AddressNotAllowedError as exc:
            raise InvalidParamsError(
                f"Push notification url {given.url!r} {exc}. Give the public http(s) URL of your receiver."
            ) from None
        auth = given.authentication if given.HasField("authentication") else None
        if auth is not None and bool(auth.scheme) != bool(auth.credentials):
            raise InvalidParamsError(
                "Push config authentication needs both scheme and credentials (sent as "
                "'Authorization: <scheme> <credentials>'); give both, or leave authentication out."
            )
        secrets = [given.token, *((auth.scheme, auth.credentials) if auth else ())]
        if any(len(s) > MAX_SECRET_CHARS for s in secrets):
            raise InvalidParamsError(f"A push config token or credential has at most {MAX_SECRET_CHARS} characters.")
        # They go out as header values: anything else could never be sent (a line break, a
        # non-ASCII character), and the push would fail on every retry.
        if not all(_HEADER_SAFE.fullmatch(s) for s in secrets):
            raise InvalidParamsError(
                "A push config token, scheme or credentials is sent as an HTTP header: use printable "
                "ASCII only (no line breaks or other control characters, no accents)."
            )
        config = PushConfig(
            task_id=task_id,
            config_id=given.id,
            url=given.url,
            created_at=time.time(),
            token=given.token or None,
            auth_scheme=auth.scheme if auth and auth.scheme else None,
            auth_credentials=auth.credentials if auth and auth.credentials else None,
        )
        return self.for_task(config, task_id) if task_id else config

    def save(self, config: PushConfig) -> None:
        """Store `config` (replacing the task's config of the same id), or InvalidParamsError
        when its task already has as many as it may."""
        if not self._store.save_push_config(config, MAX_CONFIGS_PER_TASK):
            raise InvalidParamsError(
                f"Task {config.task_id} already has {MAX_CONFIGS_PER_TASK} push configs, the most a task may "
                "have. Delete one (DeleteTaskPushNotificationConfig), or give the id of one to replace it."
            )

    @staticmethod
    def page(configs: list[PushConfig], page_size: int, page_token: str) -> tuple[list[PushConfig], str]:
        """One page of a task's configs (oldest first) and the token of the next ('' after the
        last). The token is the place of the next config: one deleted meanwhile moves the rest
        (a replaced one keeps its place)."""
        if page_size < 0:
            raise InvalidParamsError(f"pageSize must be 0 (all) or more, got {page_size}.")
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):
            raise InvalidParamsError(
                f"pageToken {page_token[:40]!r} is not one this server gave; leave it out to start from the first page."
            )
        start = int(page_token or 0)
        end = start + (page_size or len(configs))
        return configs[start:end], str(end) if end < len(configs) else ""

    @staticmethod
    def for_task(config: PushConfig, task_id: str) -> PushConfig:
        # An unnamed config is named after its task, as the a2a-sdk's stores do: one per task.
        return replace(config, task_id=task_id, config_id=config.config_id or task_id)

    @staticmethod
    def as_a2a(config: PushConfig) -> TaskPushNotificationConfig:
        given = TaskPushNotificationConfig(
            id=config.config_id, task_id=config.task_id, url=config.url, token=config.token or ""
        )
        if config.auth_scheme:
            given.authentication.scheme = config.auth_scheme
            given.authentication.credentials = config.auth_credentials or ""
        return given

    # -- notifications --------------------------------------------------------------------------

    def queue(self, events: list[Event]) -> None:
        """The archiver has stored `events`: queue the pushes they make. Never raises (a push
        must not hold back the log)."""
        pushed = [e for e in events if e.event_type in _PUSHED]
        if not pushed:
            return
        try:
            configs = self._store.push_configs({e.task_id for e in pushed})
            for task_id, task_configs in configs.items():
                self._queue(task_id, [e for e in pushed if e.task_id == task_id], task_configs)
        except Exception:
            log.exception("could not queue A2A push notifications for %d events", len(pushed))

    def catch_up(self, config: PushConfig) -> None:
        """Push what the task's stored log holds so far to `config` (a config given with the
        message that started the task, saved after its first events may have been stored)."""
        events = [e for e in self._store.load_events(config.task_id) if e.event_type in _PUSHED]
        if events:
            self._queue(config.task_id, events, [config], log_so_far=events)

    def _queue(
        self, task_id: str, events: list[Event], configs: list[PushConfig], log_so_far: list[Event] | None = None
    ) -> None:
        record = self._store.get(task_id)
        fold = Fold(record)
        first = events[0].sequence
        if log_so_far is None and any(e.event_type in _ENDINGS for e in events):
            # The final updates send again what changed since its `output`: the fold must know it.
            log_so_far = self._store.load_events(task_id)
        for earlier in log_so_far or []:
            if earlier.sequence < first:
                fold.apply(earlier)
        # (the event's sequence, the update's place among the event's, the update), in order
        updates: list[tuple[int, int, A2aEvent]] = []
        for event in events:
            made = fold.apply(event)
            last = made[-1] if made else None
            if isinstance(last, TaskStatusUpdateEvent) and last.status.state in FINAL_STATES:
                made = [*made[:-1], *final_updates(record, fold, last), last]  # as streams send them
            updates += [(event.sequence, place, update) for place, update in enumerate(made)]
        now = time.time()
        rows = []
        for config in configs:
            headers = {TOKEN_HEADER: config.token} if config.token else {}
            if config.auth_scheme:
                headers["Authorization"] = f"{config.auth_scheme} {config.auth_credentials}"
            for order, (sequence, place, update) in enumerate(updates):
                body = MessageToDict(to_stream_response(update))
                (kind,) = body  # statusUpdate or artifactUpdate
                seed = f"a2a\0{task_id}\0{config.config_id}\0{sequence}\0{place}"
                rows.append(
                    WebhookDelivery(
                        webhook_id="msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32],
                        task_id=task_id,
                        url=config.url,
                        event_type=f"a2a.{kind}",
                        payload=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                        created_at=now,
                        # Claimed in the order they were made (they are sent in parallel, though).
                        next_attempt_at=now + order * 1e-6,
                        headers=headers,
                    )
                )
        self._store.add_webhooks(rows)
