"""``python -m benchmarks.workers``: the gateway with 1 worker process, then with 2.

Issue #10's fourth target: how throughput scales with ``extproc serve --workers N``.
Same fast upstream, same request and same gateway config as row (c) of
``benchmarks.run``; only the number of worker processes changes. The table gives
each row's req/s and latency, the 2-worker/1-worker throughput ratio per
concurrency, and each process's CPU (supervisor, workers, Valkey, Envoy, wrk),
so a ratio below 2 can be read against the cores everything shares.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benchmarks.cpu import child_pids
from benchmarks.load_generator import DEFAULT_AUTHORIZATION
from benchmarks.report import Row, machine_note
from benchmarks.run import QUICK_DURATION_S, measure_scenario
from benchmarks.scenarios import GATEWAY_CONFIG, Scenario, Target, running_upstream
from extproc.devstack import LocalStack, Ports

WORKER_COUNTS = (1, 2)


def gateway_with(workers: int) -> Callable[[Path, Target], AbstractContextManager[Target]]:
    @contextmanager
    def start(workdir: Path, upstream: Target) -> Iterator[Target]:
        fresh = Ports.free()
        upstream_port = int(upstream.base_url.rpartition(":")[2])
        ports = Ports(fresh.envoy, fresh.envoy_admin, fresh.grpc, fresh.http, upstream_port)
        stack = LocalStack(
            workdir=workdir, ports=ports, config_path=GATEWAY_CONFIG, real_provider="mock",
            workers=workers,
        )  # fmt: skip
        try:
            stack.start()
            gateway = stack.process("gateway").pid
            pids = {"envoy": stack.process("envoy").pid, "gateway": gateway, **upstream.pids}
            # With workers: the supervisor's children are the Valkey and the workers.
            for index, child in enumerate(child_pids(gateway)):
                pids[f"child-{index}"] = child
            yield Target(stack.base_url, stack.envoy_admin_url, pids, DEFAULT_AUTHORIZATION)
        finally:
            stack.stop()

    return start


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'workers':<9}{'conns':>5}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"]
    for row in rows:
        result = row.result
        if result is None:
            lines.append(f"{row.title:<9}{row.connections:>5}  failed: {row.failure}")
            continue
        lines.append(
            f"{row.title:<9}{row.connections:>5}{result.requests_per_s:>9.0f}"
            f"{result.p50_ms:>8.2f}{result.p99_ms:>8.2f}{result.errors:>7}"
        )
    for connections in sorted({row.connections for row in rows}):
        by_workers = {
            row.title: row.result for row in rows if row.connections == connections and row.result
        }
        one, two = by_workers.get("1"), by_workers.get("2")
        if one and two and one.requests_per_s:
            ratio = two.requests_per_s / one.requests_per_s
            lines.append(f"2 workers / 1 worker at {connections} connection(s): {ratio:.2f}x req/s")
    lines.append("")
    for row in rows:
        shares = ", ".join(f"{name} {share:.0f}%" for name, share in sorted(row.cpu.items()))
        lines.append(f"cpu, {row.title} worker(s) at {row.connections}: {shares}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--connections", default="1,16", help="e.g. 1,16")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:.0f} s per row")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    duration = QUICK_DURATION_S if args.quick else args.duration
    connections = [int(part) for part in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="aigw-bench-workers-"))
    rows: list[Row] = []
    with running_upstream(workdir / "upstream") as upstream:
        for workers in WORKER_COUNTS:
            scenario = Scenario(f"w{workers}", str(workers), gateway_with(workers))
            rows += measure_scenario(
                scenario, workdir / scenario.key, upstream, connections, duration
            )
    print()
    print(format_rows(rows))
    print()
    print(machine_note())
    if all(row.ok for row in rows):
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"some rows failed; logs kept in {workdir}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
