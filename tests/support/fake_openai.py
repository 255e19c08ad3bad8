"""A tiny OpenAI-compatible chat endpoint, run in a thread: it streams a fixed answer word by
word, can fail on purpose, and reports usage when asked (`stream_options.include_usage`) unless
told to behave like a server that never does.

A request with a JSON-schema `response_format` is, by `forms`: "ignore" answered with the fixed
text (a server that does not know the parameter), "fill" answered with JSON that fills in every
field of the schema (a server that holds its model to the form), "refuse" answered 400 (a
server or model without structured output).

Its first `cut_first` answers break off after `cut_after` chunks (the connection is dropped
mid-stream); its first `stall_first` answers wait `stall_s` before the first chunk; every chunk
can be slowed by `chunk_delay_s`. `active` and
`most_active` count the answers being streamed at once.

A `reply(body)` function, when given, decides each answer instead (a `Reply`): its text in the
pieces it streams, which may be hostile (any code point, huge), and how it misbehaves — cut
mid-stream, or a `data:` line that is not JSON (the model-side fuzzing, test_model_fuzz.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from delivery.crew.compat import FINAL_ANSWER_PREFIX
from tests.support.server_process import free_port

ANSWER = FINAL_ANSWER_PREFIX + "# Document\n\n- REQ-1: the feature works\n- TC-1 covers REQ-1\n"


PROMPT_TOKENS = 111  # what it claims each prompt used (a real server counts; a fixed figure is checkable)


@dataclass
class Reply:
    """One answer: the content deltas it streams, in order, and how it breaks (if it does)."""

    pieces: list[str]
    cut_after: int | None = None  # the connection drops after this many pieces
    not_json_after: int | None = None  # then a `data:` line that is not JSON, and nothing more


class FakeOpenAI:
    def __init__(
        self,
        fail_first: int = 0,
        status: int = 503,
        reports_usage: bool = True,
        forms: str = "ignore",
        cut_first: int = 0,
        cut_after: int = 5,
        stall_first: int = 0,
        stall_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        answer: str = ANSWER,
        reply: Callable[[dict], Reply | None] | None = None,
    ) -> None:
        """`answer`: the text streamed (word by word) when no form is filled. `reply(body)`: the
        answer to each request, instead of all of the above but `fail_first` and `chunk_delay_s`
        (called on the fake's own thread, one request at a time; None: the usual answer)."""
        self.fail_first, self.status, self.reports_usage, self.forms = fail_first, status, reports_usage, forms
        self.cut_first, self.cut_after, self.stall_first, self.stall_s = cut_first, cut_after, stall_first, stall_s
        self.chunk_delay_s = chunk_delay_s
        self.answer = answer
        self.reply = reply
        self.answers = 0  # streamed answers started
        self.active = self.most_active = 0
        self.requests = 0
        self.bodies: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.02)

    async def _chat(self, request: Request):
        self.requests += 1
        body = await request.json()
        self.bodies.append(body)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self.requests <= self.fail_first:
            return JSONResponse(
                {"error": {"message": "overloaded, try again", "type": "server_error"}}, status_code=self.status
            )

        form = (body.get("response_format") or {}).get("json_schema")
        scripted = self.reply(body) if self.reply is not None else None
        if scripted is not None:
            pieces = scripted.pieces
        elif form and self.forms == "refuse":
            return JSONResponse(
                {
                    "error": {
                        "message": "response_format of type json_schema is not supported with this model",
                        "type": "invalid_request_error",
                    }
                },
                status_code=400,
            )
        elif form and self.forms == "fill":
            text = json.dumps(filled(form["schema"]), ensure_ascii=False)
            pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
        else:
            pieces = [word + " " for word in self.answer.split(" ")]

        self.answers += 1
        if scripted is not None:
            cut_after, garbage_after, stall = scripted.cut_after, scripted.not_json_after, 0.0
        else:
            cut_after = self.cut_after if self.answers <= self.cut_first else None
            garbage_after, stall = None, self.stall_s if self.answers <= self.stall_first else 0.0

        async def chunks():
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                async for chunk in _chunks():
                    yield chunk
            finally:
                self.active -= 1

        async def _chunks():
            if stall:
                await asyncio.sleep(stall)
            for n, piece in enumerate(pieces):
                if n == cut_after:
                    raise ConnectionAbortedError("the fake drops the connection mid-stream")
                if n == garbage_after:
                    yield 'data: {"choices": [{"delta": {"content": "unterminated\n\n'
                    return
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
                delta = {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "fake",
                }
                yield f"data: {json.dumps(delta)}\n\n"
            done = {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fake",
            }
            yield f"data: {json.dumps(done)}\n\n"
            if wants_usage and self.reports_usage:  # as OpenAI does: a last chunk with no choices
                words = len(pieces)
                usage = {
                    "choices": [],
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "fake",
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": words,
                        "total_tokens": PROMPT_TOKENS + words,
                    },
                }
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def filled(schema: dict, text: Callable[[], str] = lambda: "Filled in by the fake model") -> object:
    """A value that fills in every field of `schema` (a list names every value its items' enum
    allows; other lists have two items), each text field with `text()`."""
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("type") == "object":
        return {name: filled(sub, text) for name, sub in schema["properties"].items()}
    if schema.get("type") == "array":
        items = schema["items"]
        return list(items["enum"]) if "enum" in items else [filled(items, text), filled(items, text)]
    return text()
