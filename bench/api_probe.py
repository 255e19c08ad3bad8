"""`python -m bench.api_probe URL TASK_ID...`: GET each task's status in turn, every ~100 ms, and
print each answer's time in seconds (or "error"), one a line, until terminated.

Its own process: the load client's event loop is busy reading every viewer's stream (5,000 at
the viewers sweep's top), and a GET timed from there would count that loop's queueing as the
API's (it did: a status GET timed out after 60 s while the API answered others)."""

from __future__ import annotations

import sys
import time

import httpx


def main(url: str, ids: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while True:
            sent = time.perf_counter()
            try:
                client.get(f"/api/task/{ids[n % len(ids)]}/status").raise_for_status()
                print(time.perf_counter() - sent, flush=True)
            except httpx.HTTPError:
                print("error", flush=True)
            n += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - sent)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
