"""``make bench``: every performance target of issues #2 and #10, side by side, in one run.

For each wrk scenario (``benchmarks.scenarios``) and each connection count, the
run sends one request to check the answer is a 200 chat.completion, warms up
for a second, then measures with ``wrk --latency`` while sampling each process's
CPU. Then the memory row (``benchmarks.memory``) and the streaming rows
(``benchmarks.streaming``). It prints the wrk table, the streaming table, the
memory figures, CPU per process, and one table of every target with this run's
figure. All traffic stays on 127.0.0.1; every process started is stopped at the
end, on errors and on Ctrl-C/SIGTERM too. Exit status: 0 when every row passed
(a target not met is a finding, not a failure), 1 when a row failed (errors, a
wrong answer, no figures), 2 when wrk is missing, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks.interleave import WARMUP_S, apply_windows, measure_interleaved, measure_window
from benchmarks.load_generator import check_one_request, write_script
from benchmarks.memory import RULES, SUBJECTS, MemoryRow, measure_memory
from benchmarks.report import (
    Row,
    format_auth_cost,
    format_cpu,
    format_cpu_per_request,
    format_memory,
    format_stream_table,
    format_table,
    json_document,
    load_average,
    machine_note,
    write_json,
)
from benchmarks.scenarios import SCENARIOS, Scenario, Target, running_upstream
from benchmarks.sse_upstream import DEFAULT_EVENTS
from benchmarks.streaming import STREAM_SCENARIOS, StreamRow, measure_streams
from benchmarks.targets import figures, format_targets, targets_json

QUICK_DURATION_S = 3.0
STREAM_REQUESTS = 200
QUICK_STREAM_REQUESTS = 50
QUICK_SUBJECTS = 2_000
# Names --only accepts besides the scenario keys: groups of rows.
GROUPS = {
    "workers": ("w1", "w2"),
    "stream": tuple(s.key for s in STREAM_SCENARIOS),
    "memory": ("memory",),
}
ALL_KEYS = (
    *(s.key for s in SCENARIOS),
    *(s.key for s in STREAM_SCENARIOS),
    "memory",
)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    streams: list[StreamRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(r.ok for r in self.rows)
            and all(s.ok for s in self.streams)
            and all(m.ok for m in self.memory)
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk row")
    parser.add_argument("--connections", type=_connection_counts, default=[1, 16], help="e.g. 1,16")
    parser.add_argument(
        "--only",
        type=_selection,
        default=list(ALL_KEYS),
        help="rows to run, e.g. a,b,prod,stream (keys: "
        + ",".join((*(s.key for s in SCENARIOS), *GROUPS))
        + "; default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION_S:.0f} s per wrk row, {QUICK_STREAM_REQUESTS} streams per "
        f"streaming row, {QUICK_SUBJECTS:,} subjects in the memory row",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the wrk rows in N interleaved rounds of duration/N s (all scenarios "
        "running at once), so a neighbour's burst spreads over every row",
    )
    parser.add_argument("--stream-requests", type=int, default=None, help="streams per row")
    parser.add_argument("--stream-events", type=int, default=DEFAULT_EVENTS, help="chunks/stream")
    parser.add_argument(
        "--stream-interval-ms", type=float, default=0.0, help="upstream pause between chunks"
    )
    parser.add_argument("--subjects", type=int, default=None, help="distinct keys in memory row")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION_S
    if args.rounds < 1 or args.duration / args.rounds < 1:
        parser.error("--rounds: at least 1, and at most --duration (each window lasts >= 1 s)")
    if args.stream_requests is None:
        args.stream_requests = QUICK_STREAM_REQUESTS if args.quick else STREAM_REQUESTS
    if args.subjects is None:
        args.subjects = QUICK_SUBJECTS if args.quick else SUBJECTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    load_before = load_average()
    try:
        results = measure_all(workdir, args)
    except KeyboardInterrupt:
        print(f"\ninterrupted; processes stopped; logs in {workdir}", file=sys.stderr)
        return 130
    found = figures(
        results.rows, results.streams, results.memory, _prod_title(), _workers_skipped()
    )
    if results.rows:
        print()
        print(format_table(results.rows))
    if results.streams:
        print()
        print(format_stream_table(results.streams))
    for memory in results.memory:
        print()
        print(format_memory(memory))
    print()
    print(format_cpu(results.rows, results.streams, results.memory))
    if results.rows:
        print()
        print(format_cpu_per_request(results.rows))
    variants = format_auth_cost(results.rows, args.connections)
    if variants:
        print()
        print(variants)
    print()
    print(format_targets(found))
    print()
    print(machine_note(load_before, load_average()))
    if args.json is not None:
        settings = {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "only": args.only,
            "stream_requests": args.stream_requests,
            "stream_events": args.stream_events,
            "stream_interval_ms": args.stream_interval_ms,
            "subjects": args.subjects,
        }
        document = json_document(
            results.rows, results.streams, results.memory, targets_json(found), settings
        )
        write_json(args.json, document)
    if results.ok:
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"some rows failed; logs kept in {workdir}", file=sys.stderr)
    return 1


def measure_all(workdir: Path, args: argparse.Namespace) -> Results:
    results = Results()
    selected = set(args.only)
    load = [s for s in SCENARIOS if s.key in selected]
    if load or "memory" in selected:
        with running_upstream(workdir / "upstream") as upstream:
            if args.rounds > 1:
                results.rows += measure_interleaved(
                    load, workdir, upstream, args.connections, args.duration, args.rounds
                )
            else:
                for scenario in load:
                    connections = list(scenario.connections or args.connections)
                    results.rows += measure_scenario(
                        scenario, workdir / scenario.key, upstream, connections, args.duration
                    )
            if "memory" in selected:
                results.memory.append(
                    measure_memory(workdir / "memory", upstream, args.subjects, rules=RULES)
                )
    streams = [s for s in STREAM_SCENARIOS if s.key in selected]
    results.streams = measure_streams(
        workdir / "stream", streams, args.stream_events, args.stream_requests,
        args.stream_interval_ms,
    )  # fmt: skip
    return results


def measure_scenario(
    scenario: Scenario,
    workdir: Path,
    upstream: Target,
    connections: list[int],
    duration_s: float,
) -> list[Row]:
    unavailable = scenario.unavailable()
    if unavailable is not None:
        _progress(f"skipping {scenario.title}: {unavailable}")
        return [Row(scenario.key, scenario.title, n, skipped=unavailable) for n in connections]
    _progress(f"starting {scenario.title}")
    try:
        with scenario.start(workdir, upstream) as target:
            script = write_script(workdir / "wrk", target.authorization, target.path)
            failure = check_one_request(
                target.base_url, target.authorization, target.path
            ) or scenario.check(target)
            if failure is not None:
                return [Row(scenario.key, scenario.title, n, failure=failure) for n in connections]
            return [measure(scenario, target, script, n, duration_s) for n in connections]
    except (RuntimeError, OSError) as error:
        reason = f"could not start: {str(error).splitlines()[0]}"
        return [Row(scenario.key, scenario.title, n, failure=reason) for n in connections]


def measure(
    scenario: Scenario, target: Target, script: Path, connections: int, duration_s: float
) -> Row:
    row = Row(scenario.key, scenario.title, connections)
    _progress(f"  {connections} connection(s): warm-up {WARMUP_S:.0f} s, then {duration_s:g} s")
    try:
        window = measure_window(target, script, connections, duration_s, WARMUP_S)
    except (RuntimeError, ValueError, OSError) as error:
        row.failure = str(error).splitlines()[0]
        return row
    apply_windows(row, [window])
    return row


def _connection_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return counts


def _selection(text: str) -> list[str]:
    keys: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in GROUPS:
            keys += GROUPS[part]
        elif part in ALL_KEYS:
            keys.append(part)
        else:
            valid = ", ".join((*(s.key for s in SCENARIOS), *GROUPS))
            raise argparse.ArgumentTypeError(f"unknown row {part!r} (rows: {valid})")
    if not keys:
        raise argparse.ArgumentTypeError("name at least one row")
    return keys


def _prod_title() -> str:
    return next(s.title for s in SCENARIOS if s.key == "prod")


def _workers_skipped() -> str | None:
    return next(s.unavailable() for s in SCENARIOS if s.key == "w1")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
