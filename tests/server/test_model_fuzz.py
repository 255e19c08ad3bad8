"""The model side fuzzed the way test_fuzz.py fuzzes the request side: a fake OpenAI-compatible
server streams generated hostile answers to real servers, on SQLite and PostgreSQL, with the
memory and the Redis event backends.

What the model sends is generated from a seed (random on every run; MODEL_FUZZ_SEED=<n> repeats
one, and every failure names it): any code point — NUL, unpaired surrogates, C0 and C1 controls,
bidi marks, noncharacters, line separators, the last plane, text that looks like SSE framing —
in pieces of any size, a huge piece now and then, JSON forms filled with such text (structured
output), and broken streams: one cut mid-way (retried: it answers differently the next time),
one with a chunk that is not JSON, one with no text at all. Several tasks run at once.

Properties, for every task:
- it ends with exactly one terminal event (`end`, or `error` only where the model broke the
  protocol), within a deadline: never a hang;
- each model call's live text is exactly what the model streamed, cleaned by the one rule
  (delivery/events.py, `carriable`), a retry announced by `model_retry` and its answer shown
  from its start; every stored document is carriable;
- a viewer who drops mid-run and resumes with Last-Event-ID gets exactly the rest;
- after a restart of the server, the replay equals what the live viewers saw (ids, types, data),
  and a resume from any sequence (a sample) continues exactly after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from delivery.crew.compat import FINAL_ANSWER_PREFIX
from delivery.events import carriable
from tests.support.api import run_task
from tests.support.fake_openai import FakeOpenAI, Reply, filled
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.sse_client import Message, StreamResult, parse_lines

SEED = int(os.environ.get("MODEL_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
TASKS = 5  # per store and backend, run at once
FINISH_S = 150.0  # every task of a target ends within this, or the test fails: never a hang
RESUMES = 6  # sequences sampled per task for Last-Event-ID after the restart

# -- the hostile model ---------------------------------------------------------------------


def _pick(*code_points: int) -> Callable[[random.Random], str]:
    return lambda rng: chr(rng.choice(code_points))


def _span(low: int, high: int) -> Callable[[random.Random], str]:
    return lambda rng: chr(rng.randrange(low, high + 1))


CHARACTERS: list[Callable[[random.Random], str]] = [
    _span(0x20, 0x7E),  # printable ASCII
    _span(0x20, 0x7E),
    _span(0x00, 0x1F),  # C0 controls, NUL included
    _pick(0x00, 0x7F, 0x85, 0x9B, 0x9F),  # NUL, DEL, C1 controls
    _span(0xD800, 0xDFFF),  # unpaired surrogates: no encoding can write them
    _pick(0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x061C),
    _pick(0xFEFF, 0xFFFE, 0xFFFF, 0xFFFD, 0x2028, 0x2029, 0x10FFFF, 0xE000, 0x0301),
    _span(0x4E00, 0x9FFF),  # CJK
    _span(0x1F300, 0x1FAFF),  # emoji
    _span(0x0, 0x10FFFF),  # anything at all
    lambda rng: rng.choice(["\n\ndata: ", "\r\n", "\r", "id: 999\n", "event: end\n", ": ping\n\n", '"}', "\\u0000"]),
]


def hostile_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(CHARACTERS)(rng) for _ in range(length))


def in_pieces(rng: random.Random, text: str) -> list[str]:
    """`text` as a model streams it: pieces of 1 to 16 code points."""
    pieces, at = [], 0
    while at < len(text):
        size = rng.randint(1, 16)
        pieces.append(text[at : at + size])
        at += size
    return pieces


# What a model call does; one is drawn per call. `protocol` modes break the stream: a task may
# then end `error` (a cut that is retried ends well unless every attempt is cut).
MODES = {"text": 40, "huge": 8, "form": 22, "cut": 16, "not_json": 7, "empty": 7}
PROTOCOL = {"cut", "not_json", "empty"}


@dataclass
class Sent:
    """One answer as the fake streamed it."""

    mode: str
    text: str  # what it streamed before it ended or broke off, as its JSON reads


@dataclass
class HostileModel:
    """The fake server's `reply`: each task's calls draw their modes in turn, reproducibly from
    the seed and the task's tag (in its requirement, so in every prompt of the task)."""

    seed: int
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sent: dict[str, list[Sent]] = field(default_factory=lambda: defaultdict(list))

    def __call__(self, body: dict[str, Any]) -> Reply | None:
        found = TAG.search(json.dumps(body.get("messages"), ensure_ascii=False))
        if found is None:
            return None
        tag = found.group(0)
        n = self.calls[tag]
        self.calls[tag] += 1
        rng = random.Random(f"{self.seed}/{tag}/{n}")
        mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
        form = (body.get("response_format") or {}).get("json_schema")
        if mode == "form" and form:
            fill = filled(form["schema"], lambda: hostile_text(rng, rng.randint(0, 40)))
            pieces = in_pieces(rng, json.dumps(fill, ensure_ascii=False))
        elif mode == "empty":
            pieces = []
        else:
            pieces = [FINAL_ANSWER_PREFIX, *in_pieces(rng, hostile_text(rng, rng.randint(1, 300)))]
            if mode == "huge":  # one piece of 60,000 code points
                pieces.insert(rng.randint(1, len(pieces)), hostile_text(rng, 60_000))
        reply = Reply(pieces)
        if mode == "cut":
            reply.cut_after = rng.randint(1, max(1, len(pieces) - 1))
        elif mode == "not_json":
            reply.not_json_after = rng.randint(0, len(pieces))
        shown = pieces[: reply.cut_after if reply.cut_after is not None else reply.not_json_after]
        # What the chunks' JSON says: a high and a low surrogate escaped side by side in one
        # string are one character to every JSON parser.
        self.sent[tag].append(Sent(mode, "".join(json.loads(json.dumps(piece)) for piece in shown)))
        return reply


TAG = re.compile(r"model-fuzz-\d+-\w+-\d+")


@pytest.fixture(scope="module")
def model() -> Iterator[tuple[FakeOpenAI, HostileModel]]:
    print(f"model fuzzing with MODEL_FUZZ_SEED={SEED}")
    hostile = HostileModel(SEED)
    fake = FakeOpenAI(reply=hostile)
    yield fake, hostile
    fake.stop()


# -- reading streams, always with a deadline ----------------------------------------------------


def read(
    url: str, task_id: str, *, deadline: float, after: int | None = None, stop_after: int | None = None
) -> StreamResult:
    """The task's stream (from Last-Event-ID `after`) until the server closes it, or `stop_after`
    events; AssertionError past `deadline` (heartbeats keep lines coming while nothing happens)."""

    def lines(response: httpx.Response) -> Iterator[str]:
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id}: no end of stream in time [MODEL_FUZZ_SEED={SEED}]")
            yield line

    headers = {"Last-Event-ID": str(after)} if after is not None else None
    with (
        httpx.Client(base_url=url, timeout=30) as client,
        client.stream("GET", f"/api/stream/{task_id}", headers=headers) as response,
    ):
        result = StreamResult(status=response.status_code, headers=response.headers)
        assert response.status_code == 200, (task_id, response.read())
        result.closed_by_server = not parse_lines(lines(response), result, max_messages=stop_after)
        return result


def frames(messages: list[Message]) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    """What a viewer gets of each event: its id, its type and its data."""
    return [(m.id, m.event, m.json) for m in messages]


# -- the targets -------------------------------------------------------------------------------


@dataclass
class Target:
    store: str
    backend: str

    @property
    def name(self) -> str:
        return f"{self.store}{self.backend}"


TARGETS = [
    Target("sqlite", "memory"),
    Target("sqlite", "redis"),
    Target("postgresql", "memory"),
    Target("postgresql", "redis"),
]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.store}-{t.backend}")
def test_whatever_the_model_streams_every_task_ends_and_replays_and_resumes_exactly(start_server, model, target):
    fake, hostile = model
    with contextlib.ExitStack() as stack:
        env: dict[str, Any] = {
            "llm_provider": "openai",
            "openai_base_url": fake.url,
            "llm_model": "fake",
            "llm_max_retries": 2,
            "llm_retry_base_s": 0.01,
            "max_fix_rounds": 0,
            "sse_heartbeat_s": 0.5,
            "max_concurrent_tasks": TASKS,
        }
        if target.store == "postgresql":
            env["database_url"] = stack.enter_context(fresh_postgres_database())
        if target.backend == "redis":
            env.update(event_backend="redis", redis_url=ensure_redis())
        server = start_server(**env)
        seed = f"[MODEL_FUZZ_SEED={SEED}]"

        # Tasks at once, each with a viewer from the start and one who drops mid-run and resumes.
        with httpx.Client(base_url=server.url, timeout=30) as c:
            tags = [f"model-fuzz-{SEED}-{target.name}-{i}" for i in range(TASKS)]
            ids = {tag: run_task(c, f"A notes app with tags ({tag})") for tag in tags}
        deadline = time.monotonic() + FINISH_S
        drop_at = {tag: random.Random(f"{SEED}/{tag}/drop").randint(1, 40) for tag in tags}

        def drop_and_resume(tag: str) -> list[Message]:
            """A viewer who drops after a few events and at once resumes after the last it saw."""
            part = read(server.url, ids[tag], deadline=deadline, stop_after=drop_at[tag])
            rest = read(server.url, ids[tag], deadline=deadline, after=part.sequences[-1])
            return part.messages + rest.messages

        with ThreadPoolExecutor(2 * TASKS) as pool:
            whole = {tag: pool.submit(read, server.url, ids[tag], deadline=deadline) for tag in tags}
            resumed = {tag: pool.submit(drop_and_resume, tag) for tag in tags}
            live = {tag: whole[tag].result() for tag in tags}
            resumed_live = {tag: resumed[tag].result() for tag in tags}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            documents = {tag: c.get(f"/api/task/{ids[tag]}/result").json().get("deliverables") or {} for tag in tags}

        for tag in tags:
            seen = live[tag]
            events = seen.events
            why = f"task {ids[tag]} ({tag}), calls {[s.mode for s in hostile.sent[tag]]} {seed}"
            assert seen.closed_by_server, why
            assert seen.sequences == list(range(1, len(events) + 1)), why
            terminal = [e for e in events if e["event_type"] in ("end", "error", "cancelled")]
            assert len(terminal) == 1 and terminal[0] is events[-1], why
            broke_protocol = any(s.mode in PROTOCOL for s in hostile.sent[tag])
            assert events[-1]["event_type"] == "end" or (events[-1]["event_type"] == "error" and broke_protocol), (
                f"{why}: {events[-1]['content']}"
            )
            assert "failed unexpectedly" not in events[-1]["content"], f"{why}: {events[-1]['content']}"
            _assert_each_call_shown_as_streamed(events, hostile.sent[tag], why)
            for name, document in documents[tag].items():  # None: not written (the task failed first)
                assert document is None or carriable(document) == document, f"{why}: {name} holds what none can carry"
            assert frames(resumed_live[tag]) == frames(seen.messages), f"{why}: resumed mid-run otherwise"

        # A restart: the replay equals what the live viewers saw, and a resume from any sequence
        # continues exactly after it.
        server.stop()
        again = start_server(port=server.port, data_dir=server.env["DATA_DIR"], **env)
        deadline = time.monotonic() + 60
        for tag in tags:
            why = f"task {ids[tag]} ({tag}) after a restart {seed}"
            watched = frames(live[tag].messages)
            assert frames(read(again.url, ids[tag], deadline=deadline).messages) == watched, why
            pick = random.Random(f"{SEED}/{tag}/resume")
            sample = pick.sample(range(len(watched) + 1), min(RESUMES, len(watched) + 1))
            for after in sorted({0, 1, len(watched) - 1, len(watched), *sample}):
                rest = read(again.url, ids[tag], deadline=deadline, after=after)
                assert rest.closed_by_server and frames(rest.messages) == watched[after:], f"{why}, from {after}"


def _assert_each_call_shown_as_streamed(events: list[dict[str, Any]], sent: list[Sent], why: str) -> None:
    """The task's model calls in order (each opens with an `action` "Calling model"): what viewers
    saw of each is what the fake streamed, cleaned by the one rule; a retry follows a cut."""
    calls: list[list[dict[str, Any]]] = []
    for event in events:
        if event["event_type"] == "action" and event["content"].startswith("Calling model"):
            calls.append([])
        elif calls and event["event_type"] in ("thought", "model_retry"):
            calls[-1].append(event)
    assert len(calls) == len(sent), f"{why}: {len(calls)} calls shown, {len(sent)} answered"
    for n, (shown, answer) in enumerate(zip(calls, sent, strict=True)):
        text = "".join(e["content"] for e in shown if e["event_type"] == "thought")
        expected = carriable(answer.text)
        assert text == expected, f"{why}: call {n} ({answer.mode}) shown otherwise, {_difference(text, expected)}"
        retried = [e for e in shown if e["event_type"] == "model_retry"]
        if answer.mode == "cut" and n + 1 < len(sent):
            assert len(retried) == 1 and shown[-1] is retried[0], f"{why}: call {n} was cut without a retry event"


def _difference(shown: str, expected: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(shown, expected, strict=False)) if a != b), min(len(shown), len(expected))
    )
    return f"from code point {at}: {shown[at : at + 12]!r} instead of {expected[at : at + 12]!r}"
