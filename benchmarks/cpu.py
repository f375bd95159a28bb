"""Where the two cores went during one measurement: CPU time per process, from /proc.

Also what a process holds in memory (``resident_bytes``) and who its children
are (the gateway's embedded Valkey and worker processes).

Shares are in percent of one core over the measurement's wall time, so on the
two-core reference machine the shares add up to at most 200%. Each process's
main thread is also measured on its own: in a Python processor that is the
event loop, where the Python work runs, while grpc's own threads (its poller and
I/O threads) make up the rest of the process's share. ``wrk`` itself is
counted through ``RUSAGE_CHILDREN``: it is the only child that ends inside the
window. Without /proc (not Linux) the meter reports nothing.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from types import TracebackType

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


class CpuMeter:
    """CPU share of named processes (and of the load generator) between enter and exit.

    The load generator is ``wrk`` (a child that ends inside the window), or with
    ``client="client"`` this Python process itself (the streaming and memory rows'
    own clients).
    """

    def __init__(self, pids: dict[str, int], client: str = "wrk") -> None:
        self._pids = pids
        self._client = client
        self._usage = resource.RUSAGE_CHILDREN if client == "wrk" else resource.RUSAGE_SELF
        self._start: dict[str, float] = {}
        self._start_children = 0.0
        self._start_wall = 0.0
        self._start_main: dict[str, float] = {}
        self.shares: dict[str, float] = {}
        # The same for each process's main thread alone (a part of its share).
        self.main_thread_shares: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = _cpu_seconds_by_name(self._pids)
        self._start_main = _cpu_seconds_by_name(self._pids, main_thread=True)
        self._start_children = _rusage_seconds(self._usage)
        self._start_wall = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        wall = time.monotonic() - self._start_wall
        end = _cpu_seconds_by_name(self._pids)
        used = {name: end[name] - self._start[name] for name in end if name in self._start}
        used[self._client] = _rusage_seconds(self._usage) - self._start_children
        self.shares = {name: 100 * seconds / wall for name, seconds in used.items() if wall > 0}
        end_main = _cpu_seconds_by_name(self._pids, main_thread=True)
        self.main_thread_shares = {
            name: 100 * (end_main[name] - self._start_main[name]) / wall
            for name in end_main
            if name in self._start_main and wall > 0
        }


def child_pids(parent: int) -> list[int]:
    """Direct children of a process (the gateway's embedded Valkey, for one).

    Each thread lists the children it forked, so every thread's list is read: the
    gateway starts Valkey from a worker thread.
    """
    pids: list[int] = []
    for children in (_PROC / str(parent) / "task").glob("*/children"):
        try:
            pids += [int(pid) for pid in children.read_text().split()]
        except OSError:
            continue
    return sorted(pids)


def process_name(pid: int) -> str:
    """The process's command name (``comm``), or "" once it is gone."""
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def process_cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def resident_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """The process's resident set size, or None once it is gone. ``field="RssAnon"``: only
    its private memory, without the shared libraries' pages (``RssFile``)."""
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def _cpu_seconds_by_name(pids: dict[str, int], main_thread: bool = False) -> dict[str, float]:
    found = {name: _cpu_seconds(pid, main_thread) for name, pid in pids.items()}
    return {name: seconds for name, seconds in found.items() if seconds is not None}


def _cpu_seconds(pid: int, main_thread: bool = False) -> float | None:
    # The process's stat counts all its threads; its main thread's (whose id is
    # the process id) counts that thread alone.
    process = _PROC / str(pid)
    path = process / "task" / str(pid) / "stat" if main_thread else process / "stat"
    try:
        stat = path.read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces): state is index 0,
    # utime index 11, stime index 12, in clock ticks.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def _rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
