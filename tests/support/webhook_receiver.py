"""A real HTTP receiver of webhooks that verifies each one as a Standard Webhooks consumer does
(standardwebhooks' own verify), and can be told to fail, redirect or answer slowly."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.server_process import free_port
from tests.support.waiting import wait_for


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.received: list[Received] = []  # verified notifications, in arrival order
        self.refused = 0  # requests whose signature did not verify
        self.answers: list[int] = []  # status codes to answer next, one per request; then 204
        self.delay_s = 0.0
        self._verifier = Webhook(secret)
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, 10, message="the webhook receiver to start")

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        try:
            body = self._verifier.verify(raw, headers)
        except WebhookVerificationError:
            with self._lock:
                self.refused += 1
            return Response(status_code=400)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self._lock:
            status = self.answers.pop(0) if self.answers else 204
            if status < 300:
                self.received.append(Received(headers, body))
        headers_out = {"location": "http://127.0.0.1:9/elsewhere"} if 300 <= status < 400 else {}
        return Response(status_code=status, headers=headers_out)

    def types(self, task_id: str) -> list[str]:
        with self._lock:
            return [r.body["type"] for r in self.received if r.body["data"]["task_id"] == task_id]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
