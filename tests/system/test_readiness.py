"""Liveness and readiness against real parts: an API process on PostgreSQL and Redis reached
through proxies that the test takes down and brings back, as a database or Redis restart would."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.real_services import PG_PORT, REDIS_PORT, ensure_redis, fresh_postgres_database
from tests.support.server_process import Server
from tests.support.tcp_proxy import CuttableProxy
from tests.support.waiting import wait_for

PARTS = {"database", "events", "archiver", "executor", "watchdog"}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, CuttableProxy, CuttableProxy]]:
    ensure_redis()
    with fresh_postgres_database() as database_url:
        pg, redis = CuttableProxy(PG_PORT), CuttableProxy(REDIS_PORT)
        folder = tmp_path_factory.mktemp("readiness")
        env = {
            "DATABASE_URL": database_url.replace(f":{PG_PORT}/", f":{pg.port}/"),
            "EVENT_BACKEND": "redis",
            "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "DATA_DIR": str(folder / "data"),
        }
        assert env["DATABASE_URL"] != database_url
        server = Server(env, folder / "server.log")
        try:
            yield server, pg, redis
        finally:
            server.stop()
            pg.close()
            redis.close()


def ready(server: Server) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=10)


def test_a_healthy_process_is_live_and_ready_and_says_what_it_checked(proxied):
    server, _, _ = proxied
    live = httpx.get(server.url + "/livez", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    r = ready(server)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.json() == {"status": "ready", "checks": dict.fromkeys(PARTS, "ok")}


@pytest.mark.parametrize(
    ("part", "says"), [("database", "check DATABASE_URL"), ("events", "check REDIS_URL")], ids=["postgres", "redis"]
)
def test_readiness_names_the_part_that_is_away_and_recovers_with_it(proxied, part, says):
    server, pg, redis = proxied
    proxy = pg if part == "database" else redis
    proxy.down()
    try:
        answers: list[httpx.Response] = []

        def failing() -> bool:
            answers.append(ready(server))
            return answers[-1].status_code == 503

        wait_for(failing, 20, message=f"/readyz to fail on {part}")
        body = answers[-1].json()
        assert body["status"] == "not ready" and body["failing"] == [part], body
        assert says in body["checks"][part] and set(body["checks"]) == PARTS
        assert httpx.get(server.url + "/livez", timeout=5).status_code == 200  # alive: no restart needed
    finally:
        proxy.up()
    wait_for(lambda: ready(server).status_code == 200, 30, message=f"/readyz to recover with {part}")
