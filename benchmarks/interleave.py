"""One measurement window of a load row, and ``--rounds N``: load rows in interleaved rounds.

On a shared machine another tenant's burst lands on whichever row runs at that
moment, and a ratio between two rows measured a minute apart inherits it. With
``--rounds N`` every selected load scenario is started at once (idle, they cost
next to nothing), then each row is measured in N windows of duration/N seconds,
round-robin across the scenarios, so a burst spreads over all of them. A row's
figures combine its windows: req/s is the mean (the windows have equal
lengths), p50 and p99 are the median of the windows' p50 and p99 (robust to one
window hit by a burst; with N = 1 they are wrk's own), errors add up, CPU
shares are averaged. ``--rounds 1`` (the default) is the plain sequential run.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cpu import CpuMeter
from benchmarks.envoy_admin import ext_proc_counters, messages_per_stream
from benchmarks.load_generator import LoadResult, check_one_request, run_wrk, write_script
from benchmarks.report import Row
from benchmarks.scenarios import Scenario, Target

WARMUP_S = 1.0


@dataclass(frozen=True, slots=True)
class Window:
    """One ``wrk`` run of a row, with the CPU and ext_proc counters around it."""

    result: LoadResult
    cpu: dict[str, float]
    counters: tuple[tuple[int, int], tuple[int, int]]  # (streams, messages) before, after
    # Each process's main thread alone (see ``CpuMeter``).
    main_thread: dict[str, float] = field(default_factory=dict)


def measure_window(
    target: Target, script: Path, connections: int, duration_s: float, warmup_s: float
) -> Window:
    if warmup_s > 0:
        run_wrk(target.base_url, script, connections, warmup_s)
    before = ext_proc_counters(target.admin_url)
    with CpuMeter(target.pids) as meter:
        result = run_wrk(target.base_url, script, connections, duration_s)
    counters = (before, ext_proc_counters(target.admin_url))
    return Window(result, meter.shares, counters, meter.main_thread_shares)


def apply_windows(row: Row, windows: Sequence[Window]) -> None:
    """The row's figures from its windows (see the module docstring)."""
    if not windows:
        return
    results = [w.result for w in windows]
    row.result = LoadResult(
        requests_per_s=statistics.fmean(r.requests_per_s for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        non_2xx_3xx=sum(r.non_2xx_3xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )
    row.cpu = _mean_shares([w.cpu for w in windows])
    row.main_thread_cpu = _mean_shares([w.main_thread for w in windows])
    streams = sum(after[0] - before[0] for before, after in (w.counters for w in windows))
    messages = sum(after[1] - before[1] for before, after in (w.counters for w in windows))
    row.ext_proc_msgs_per_stream = messages_per_stream((0, 0), (streams, messages))
    if row.result.errors:
        row.failure = (
            f"{row.result.non_2xx_3xx} non-2xx/3xx responses, "
            f"{row.result.socket_errors} socket errors"
        )


def _mean_shares(windows: Sequence[dict[str, float]]) -> dict[str, float]:
    # The processes are the same in every window: keep the first window's order.
    return {name: statistics.fmean(w.get(name, 0.0) for w in windows) for name in windows[0]}


def measure_interleaved(
    scenarios: Sequence[Scenario],
    workdir: Path,
    upstream: Target,
    connections: Sequence[int],
    duration_s: float,
    rounds: int,
) -> list[Row]:
    """Every scenario started at once, then ``rounds`` round-robin passes over the rows."""
    rows: list[Row] = []
    running: list[tuple[Target, Path, list[Row]]] = []
    with ExitStack() as stack:
        for scenario in scenarios:
            own = [
                Row(scenario.key, scenario.title, n) for n in scenario.connections or connections
            ]
            rows += own
            unavailable = scenario.unavailable()
            if unavailable is not None:
                _progress(f"skipping {scenario.title}: {unavailable}")
                for row in own:
                    row.skipped = unavailable
                continue
            _progress(f"starting {scenario.title}")
            try:
                target = stack.enter_context(scenario.start(workdir / scenario.key, upstream))
            except (RuntimeError, OSError) as error:
                for row in own:
                    row.failure = f"could not start: {str(error).splitlines()[0]}"
                continue
            script = write_script(workdir / scenario.key / "wrk", target.authorization, target.path)
            failure = check_one_request(
                target.base_url, target.authorization, target.path
            ) or scenario.check(target)
            for row in own:
                row.failure = failure
            if failure is None:
                running.append((target, script, own))
        windows: dict[int, list[Window]] = {id(row): [] for row in rows}
        window_s = duration_s / rounds
        for index in range(rounds):
            _progress(f"round {index + 1} of {rounds}: {window_s:g} s per row")
            for target, script, own in running:
                for row in own:
                    if row.failure is not None:
                        continue
                    warmup = WARMUP_S if index == 0 else 0.0
                    try:
                        window = measure_window(target, script, row.connections, window_s, warmup)
                    except (RuntimeError, ValueError, OSError) as error:
                        row.failure = str(error).splitlines()[0]
                        continue
                    windows[id(row)].append(window)
    for row in rows:
        if row.failure is None and row.skipped is None:
            apply_windows(row, windows[id(row)])
    return rows


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
