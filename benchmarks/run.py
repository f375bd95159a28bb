"""``make bench``: Envoy direct vs Envoy + echo processor vs Envoy + gateway, in one run.

For each scenario (see ``benchmarks.scenarios``) and each connection count, the
run sends one request to check the answer is a 200 chat.completion, warms up
for a second, then measures with ``wrk --latency`` while sampling each process's
CPU. All traffic stays on 127.0.0.1; every process started is stopped at the
end, on errors and on Ctrl-C/SIGTERM too. Exit status: 0 when every row passed,
1 when a row failed (errors or no figures), 2 when wrk is missing, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import FrameType

from benchmarks.cpu import CpuMeter
from benchmarks.load_generator import check_one_request, run_wrk, write_script
from benchmarks.report import (
    Row,
    format_auth_cost,
    format_cpu,
    format_table,
    machine_note,
    write_json,
)
from benchmarks.scenarios import SCENARIOS, Scenario, Target, running_upstream

WARMUP_S = 1.0
QUICK_DURATION_S = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--connections", type=_connection_counts, default=[1, 16], help="e.g. 1,16")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:.0f} s per row")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION_S
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    try:
        rows = measure_all(workdir, args.connections, args.duration)
    except KeyboardInterrupt:
        print(f"\ninterrupted; processes stopped; logs in {workdir}", file=sys.stderr)
        return 130
    print()
    print(format_table(rows))
    print()
    print(format_cpu(rows))
    auth_cost = format_auth_cost(rows, args.connections)
    if auth_cost:
        print()
        print(auth_cost)
    print()
    print(machine_note())
    if args.json is not None:
        write_json(args.json, rows, args.connections, args.duration)
    if all(row.ok for row in rows):
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"some rows failed; logs kept in {workdir}", file=sys.stderr)
    return 1


def measure_all(workdir: Path, connections: list[int], duration_s: float) -> list[Row]:
    rows: list[Row] = []
    with running_upstream(workdir / "upstream") as upstream:
        for scenario in SCENARIOS:
            scenario_dir = workdir / scenario.key
            rows += measure_scenario(scenario, scenario_dir, upstream, connections, duration_s)
    return rows


def measure_scenario(
    scenario: Scenario,
    workdir: Path,
    upstream: Target,
    connections: list[int],
    duration_s: float,
) -> list[Row]:
    _progress(f"starting {scenario.title}")
    try:
        with scenario.start(workdir, upstream) as target:
            script = write_script(workdir / "wrk", target.authorization, target.path)
            failure = check_one_request(target.base_url, target.authorization, target.path)
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
        run_wrk(target.base_url, script, connections, WARMUP_S)
        before = _ext_proc_counters(target.admin_url)
        with CpuMeter(target.pids) as meter:
            row.result = run_wrk(target.base_url, script, connections, duration_s)
        after = _ext_proc_counters(target.admin_url)
    except (RuntimeError, ValueError, OSError) as error:
        row.failure = str(error).splitlines()[0]
        return row
    row.cpu = meter.shares
    streams, messages = (end - start for start, end in zip(before, after, strict=True))
    if streams > 0:
        row.ext_proc_msgs_per_stream = messages / streams
    if row.result.errors:
        row.failure = (
            f"{row.result.non_2xx_3xx} non-2xx/3xx responses, "
            f"{row.result.socket_errors} socket errors"
        )
    return row


def _ext_proc_counters(admin_url: str) -> tuple[int, int]:
    """Envoy's ext_proc streams started and messages received from the processor, so far."""
    url = f"{admin_url}/stats?filter=ext_proc"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals = {"streams_started": 0, "stream_msgs_received": 0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        stat = name.rpartition(".")[2]
        if stat in totals and value.strip().isdigit():
            totals[stat] += int(value)
    return totals["streams_started"], totals["stream_msgs_received"]


def _connection_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return counts


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
