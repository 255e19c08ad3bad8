"""Where the CPU went during a measured window: per named process group, as % of one core.

A sweep's knee is only explained by what saturated there. Each group is a set of PIDs (our API
process, the Celery workers, redis-server, every postgres backend, nginx, this client); the
sampler reads utime+stime from /proc/PID/stat before and after the window, and the machine's
busy share from /proc/stat, so "API at 99 % of one core" (its GIL) can be told apart from "the
machine's 2 cores are full" (client and server share them here).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")

PidSource = Callable[[], Iterable[int]]


def pids_named(*names: str) -> PidSource:
    """Every live process whose command name is one of `names` (redis-server, postgres, nginx)."""

    def find() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() in names:
                        found.append(int(entry.name))
                except OSError:
                    continue  # it ended while we looked
        return found

    return find


def fixed(*pids: int) -> PidSource:
    return lambda: pids


def cpu_ticks(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuSampler:
    """`with CpuSampler({"api": fixed(pid), "redis": pids_named("redis-server")}) as cpu: ...`,
    then `cpu.result()`: {"api": 97.0, "redis": 12.5, "client": 40.1, "machine": 88.0} — each
    group's CPU as % of one core over the window, "machine" as % of all cores.

    A process that starts and ends inside the window is missed (short-lived postgres backends);
    our tests' pools keep theirs open, so that share is small."""

    def __init__(self, groups: dict[str, PidSource]) -> None:
        self.groups = {**groups, "client": fixed(os.getpid())}
        self._start: dict[str, dict[int, int]] = {}
        self._result: dict[str, float] = {}

    def _snapshot(self) -> dict[str, dict[int, int]]:
        return {name: {pid: cpu_ticks(pid) for pid in source()} for name, source in self.groups.items()}

    def __enter__(self) -> CpuSampler:
        self._t0 = time.monotonic()
        self._machine0 = _machine_ticks()
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._t0
        end = self._snapshot()
        busy1, total1 = _machine_ticks()
        for name, pids in end.items():
            before = self._start.get(name, {})
            ticks = sum(t - before.get(pid, 0) for pid, t in pids.items())
            self._result[name] = round(100 * ticks / TICKS / elapsed, 1) if elapsed > 0 else 0.0
        busy0, total0 = self._machine0
        self._result["machine"] = round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)

    def result(self) -> dict[str, float]:
        return dict(self._result)


def saturated(cpu: dict[str, float], cores: int | None = None) -> str:
    """The resource that limits at this point, from a CpuSampler result: the machine when its cores
    are (nearly) all busy, else a single-threaded process near one core (a GIL, Redis's loop), else the
    bench client near one core (then the load generator limits, not the server), else none."""
    cores = cores or os.cpu_count() or 1
    if cpu.get("machine", 0) >= 90:
        top = max((k for k in cpu if k != "machine"), key=lambda k: cpu[k], default="?")
        # what the sampled groups used, as % of all cores: well below "machine" means other
        # processes (not this bench's) took the rest, and the figure is not this design's
        ours = sum(v for k, v in cpu.items() if k != "machine") / cores
        return (
            f"machine CPU ({cores} cores, {cpu['machine']:.0f} % busy, {ours:.0f} % by the sampled "
            f"processes; most used by {top} at {cpu.get(top, 0):.0f} % of a core)"
        )
    for name, share in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if name not in ("machine", "client") and share >= 90:
            # one thread runs at a time there: a Python process's GIL, redis-server's event loop
            return f"{name} CPU at {share:.0f} % of one core (its single-thread limit)"
    if cpu.get("client", 0) >= 90:  # the load generator is one Python process too
        return f"the bench client at {cpu['client']:.0f} % of one core: the load, not the server, limits here"
    return "nothing saturated (below every CPU limit)"
