"""Exposure: API keys and stream tokens, CORS, rate limits, admission, request limits, audit."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import time

import httpx
import pytest

from tests.support.api import wait_status
from tests.support.sse_client import StreamResult, read_stream
from tests.support.waiting import wait_for

KEY, OTHER_KEY = "k-3c1f2a9d8e", "k-second-77"


def run(c: httpx.Client, requirement: str = "Build a bug tracker", **headers: str) -> httpx.Response:
    return c.post("/api/run_task", json={"user_requirement": requirement, "skip_confirmation": True}, headers=headers)


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.log"
    server = start_server(
        api_keys=f"{KEY},{OTHER_KEY}", audit_log=str(audit), stream_token_ttl_s=3, rate_limit_run_task="4/minute"
    )
    server.audit_path = audit
    return server


def test_every_api_route_wants_a_key_and_says_how_to_send_it(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        missing = c.get("/api/tasks")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <key>" in missing.json()["detail"]
        wrong = c.get("/api/tasks", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 403 and "guess" not in wrong.text and "API_KEYS" in wrong.json()["detail"]
        assert c.get("/api/tasks", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/api/tasks", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200
        assert c.post("/api/task/x/cancel").status_code == 401
        assert c.get("/api/stream/x").status_code == 401
        # The page, its files and the health check stay open.
        assert c.get("/healthz").status_code == 200 and c.get("/test-ui").status_code == 200


def test_a_stream_token_opens_one_task_stream_without_headers(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        body = run(c, **{"X-API-Key": KEY}).json()
        token, task_id = body["stream_token"], body["task_id"]
        other = run(c, **{"X-API-Key": KEY}).json()["task_id"]
    streamed = read_stream(keyed.url, task_id, params={"token": token})
    assert streamed.status == 200 and streamed.events[-1]["event_type"] == "end"
    assert read_stream(keyed.url, other, params={"token": token}).status == 403  # not its task
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert read_stream(keyed.url, task_id, params={"token": forged}).status == 403
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        fresh = c.post(f"/api/task/{other}/stream_token", headers={"X-API-Key": KEY}).json()
    assert read_stream(keyed.url, other, params={"token": fresh["stream_token"]}).status == 200

    # STREAM_TOKEN_TTL_S=3: the token works until it expires, then the same request is refused.
    def refused() -> StreamResult | None:
        result = read_stream(keyed.url, task_id, params={"token": token})
        return result if result.status == 403 else None

    expired = wait_for(refused, 10, interval=0.25, message="the stream token to expire")
    assert "expired" in expired.body


def test_rate_limit_per_key_answers_429_with_retry_after(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        first = run(c, **{"X-API-Key": OTHER_KEY, "Idempotency-Key": "retry-1"})
        codes = [first.status_code] + [run(c, **{"X-API-Key": OTHER_KEY}).status_code for _ in range(5)]
        assert codes == [202] * 4 + [429] * 2  # RATE_LIMIT_RUN_TASK=4/minute, this key's first use
        # A retry answered from its Idempotency-Key starts nothing: the limit does not refuse it.
        retried = run(c, **{"X-API-Key": OTHER_KEY, "Idempotency-Key": "retry-1"})
        assert retried.status_code == 202 and retried.headers["idempotent-replayed"] == "true"
        assert retried.json() == first.json()
        limited = run(c, **{"X-API-Key": OTHER_KEY})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "RATE_LIMIT_RUN_TASK" in limited.json()["detail"]
        assert c.get("/api/tasks", headers={"X-API-Key": OTHER_KEY}).status_code == 200  # only run_task


def from_address(server, address: str) -> httpx.Client:
    """A client whose connections come from this loopback address (all of 127/8 is this machine)."""
    return httpx.Client(base_url=server.url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_a_flood_of_wrong_keys_is_limited_by_address_before_the_key_is_checked(start_server):
    server = start_server(api_keys=KEY, rate_limit="20/minute")
    with from_address(server, "127.0.0.2") as flooder, from_address(server, "127.0.0.3") as neighbour:
        guesses = [flooder.get("/api/tasks", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(20)]
        assert guesses == [403] * 20
        limited = flooder.get("/api/tasks", headers={"X-API-Key": "guess-20"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "per client address (RATE_LIMIT)" in limited.json()["detail"]
        # The address is refused before its key is looked at: no route, no key, escapes it.
        assert flooder.get("/api/tasks", headers={"X-API-Key": KEY}).status_code == 429
        assert flooder.post("/api/task/x/cancel").status_code == 429
        assert flooder.get("/api/stream/x", headers={"X-API-Key": KEY}).status_code == 429
        assert flooder.get("/metrics", headers={"X-API-Key": KEY}).status_code == 429
        # Another address is not affected: its keys are checked as usual.
        assert neighbour.get("/api/tasks", headers={"X-API-Key": "guess"}).status_code == 403
        assert neighbour.get("/api/tasks", headers={"X-API-Key": KEY}).status_code == 200
        assert neighbour.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited_and_a_client_cannot_choose_it(start_server):
    """Nginx (nginx.conf) appends the address it saw to X-Forwarded-For; uvicorn believes that
    header only from FORWARDED_ALLOW_IPS (by default 127.0.0.1 and ::1, the proxy on this
    machine), and takes its right-most entry that is not such a proxy."""
    server = start_server(api_keys=KEY, rate_limit="5/minute")
    with from_address(server, "127.0.0.1") as proxy, from_address(server, "127.0.0.5") as direct:

        def via_proxy(forwarded_for: str) -> int:
            return proxy.get("/api/tasks", headers={"X-API-Key": "guess", "X-Forwarded-For": forwarded_for}).status_code

        assert [via_proxy("203.0.113.7") for _ in range(5)] == [403] * 5
        assert via_proxy("203.0.113.7") == 429
        # What a client writes in front of the proxy's entry does not change whom it counts against.
        assert via_proxy("198.51.100.1, 203.0.113.7") == 429
        assert via_proxy("203.0.113.8") == 403  # another client behind the same proxy
        # A client that is not a trusted proxy cannot pose as others: it counts as itself.
        spoofed = [
            direct.get("/api/tasks", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code for n in range(6)
        ]
        assert spoofed == [401] * 5 + [429]


def test_the_audit_log_has_one_line_per_change_without_secrets(keyed):
    requirement = "Build a vault for secret recipes"
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        task_id = run(c, requirement, **{"X-API-Key": KEY}).json()["task_id"]
        c.post(f"/api/task/{task_id}/cancel", headers={"X-API-Key": "wrong-key"})

    def audited() -> str:
        # This task's cancel line: other tests on this server may have cancelled theirs already.
        text = keyed.audit_path.read_text()
        return text if f"/api/task/{task_id}/cancel" in text else ""

    text = wait_for(audited, 10, message="the audit line of the refused cancel")
    assert KEY not in text and "wrong-key" not in text and requirement not in text
    lines = [json.loads(row) for row in text.splitlines()]
    created = next(line for line in lines if line["task_id"] == task_id and line["path"] == "/api/run_task")
    assert created["status"] == 202 and created["outcome"] == "ok" and created["method"] == "POST"
    assert created["who"] == "key:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert created["requirement_sha256"] == hashlib.sha256(requirement.encode()).hexdigest()
    refused = next(line for line in lines if line["task_id"] == task_id and line["path"].endswith("/cancel"))
    assert refused["status"] == 403 and refused["outcome"] == "rejected"
    assert all(line["method"] != "GET" for line in lines)  # reads are not state changes


def cancel_unknown_tasks(server, count: int, prefix: str) -> list[int]:
    """`count` refused cancels (404), each one audit line of about 230 bytes."""
    with httpx.Client(base_url=server.url, timeout=5) as c:
        return [c.post(f"/api/task/{prefix}-{n}/cancel").status_code for n in range(count)]


def test_the_audit_log_rotates_by_size_and_keeps_the_newest_lines(start_server, tmp_path):
    audit = tmp_path / "audit" / "audit.log"
    server = start_server(audit_log=str(audit), audit_log_max_mb=0.002, audit_log_backups=2)  # ~2 KB a file
    assert cancel_unknown_tasks(server, 60, "rot") == [404] * 60
    wait_for(lambda: audit.exists() and "rot-59/" in audit.read_text(), 10, message="the last audit line")
    assert sorted(p.name for p in audit.parent.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(p.stat().st_size <= 0.002 * 1024 * 1024 for p in audit.parent.iterdir())
    oldest_first = [audit.with_name("audit.log.2"), audit.with_name("audit.log.1"), audit]
    paths = [json.loads(line)["path"] for f in oldest_first for line in f.read_text().splitlines()]
    kept = [int(p.split("/")[3].removeprefix("rot-")) for p in paths]
    assert kept == list(range(60 - len(kept), 60)) and len(kept) >= 15  # whole lines, newest kept, in order


def test_a_stalled_audit_disk_holds_up_no_request_and_loses_no_line(start_server, tmp_path):
    """The audit log is a pipe whose reader takes nothing: once its 64 KiB buffer is full every
    write waits, as on a disk that stopped answering."""
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        server = start_server(audit_log=str(fifo))
        started = time.monotonic()
        assert cancel_unknown_tasks(server, 1000, "stall") == [404] * 1000  # ~230 KB of audit lines
        assert time.monotonic() - started < 60
        received = b""
        deadline = time.monotonic() + 30
        while b"stall-999/" not in received and time.monotonic() < deadline:
            if select.select([reader], [], [], 1)[0]:
                received += os.read(reader, 1 << 16)
        paths = [json.loads(line)["path"] for line in received.decode().splitlines()]
        assert paths == [f"/api/task/stall-{n}/cancel" for n in range(1000)]
    finally:
        os.close(reader)


def test_bad_requests_get_clear_4xx_answers(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        big = c.post(
            "/api/run_task",
            content=b'{"user_requirement": "' + b"x" * 70_000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413 and "MAX_REQUEST_BYTES" in big.json()["detail"]
        plain = c.post("/api/run_task", content=b"user_requirement=x", headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
        broken = c.post("/api/run_task", content=b'{"user_requirement": ', headers={"Content-Type": "application/json"})
        assert broken.status_code == 422
        assert c.get("/api/stream/x", headers={"Last-Event-ID": "seven"}).status_code == 400
        before = len(c.get("/api/tasks", params={"limit": 200}).json()["tasks"])
    # A chunked body without Content-Length is counted as it arrives.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /api/run_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(20):
            s.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert len(c.get("/api/tasks", params={"limit": 200}).json()["tasks"]) == before  # nothing created


def test_cross_origin_pages_are_refused_unless_listed(server, start_server):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/api/run_task", headers=preflight)
    assert "access-control-allow-origin" not in r.headers  # same origin only by default
    allowed = start_server(cors_origins="https://team.example")
    # A listed page may send every header the API reads, Idempotency-Key included.
    asks = "authorization, content-type, idempotency-key, last-event-id, x-api-key"
    ok = httpx.options(
        allowed.url + "/api/run_task",
        headers={**preflight, "Origin": "https://team.example", "Access-Control-Request-Headers": asks},
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "https://team.example"
    assert "Idempotency-Key" in ok.headers["access-control-allow-headers"]
    evil = httpx.options(allowed.url + "/api/run_task", headers=preflight)
    assert "access-control-allow-origin" not in evil.headers


def test_when_too_many_tasks_wait_new_ones_get_429_and_nothing_is_created(start_server):
    server = start_server(max_queued_tasks=1, max_concurrent_tasks=1, scripted_token_delay_ms=20)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        first = run(c)
        wait_status(c, first.json()["task_id"], "running", timeout=10)
        assert run(c).status_code == 202  # waits in the queue
        full = run(c)
        assert full.status_code == 429 and "MAX_QUEUED_TASKS" in full.json()["detail"]
        assert full.headers["retry-after"] == "60"
        assert len(c.get("/api/tasks").json()["tasks"]) == 2
