"""Turn measured rows into the printed tables, the CPU breakdown and the JSON file.

Ratios compare scenarios of the same run only: absolute figures drift between
runs on a shared machine, ratios hold (DESIGN.md). On each gateway row (c, the
production pipeline, d, e, f, the worker rows): ``x(a)``/``x(b) req/s`` are its
throughput over Envoy direct and over the echo processor at the same
concurrency; ``+(a) p50``/``+(a) p99`` what it adds to Envoy direct's latency
(issue #10's targets); ``+(b) p50`` what the gateway's own work adds to the
floor of any Python processor (issue #2's target). The streaming and memory
rows have tables of their own; ``benchmarks.targets`` puts every target's
figure in one last table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load_generator import LoadResult
from benchmarks.memory import MB, MemoryRow
from benchmarks.streaming import StreamRow

_COLUMNS = (
    ("scenario", "<30"),
    ("conns", ">5"),
    ("req/s", ">7"),
    ("p50 ms", ">7"),
    ("p99 ms", ">7"),
    ("errors", ">6"),
    ("x(a) req/s", ">10"),
    ("x(b) req/s", ">10"),
    ("+(a) p50", ">8"),
    ("+(a) p99", ">8"),
    ("+(b) p50", ">8"),
)
_STREAM_COLUMNS = (
    ("scenario", "<34"),
    ("streams", ">7"),
    ("TTFT p50", ">8"),
    ("TTFT p90", ">8"),
    ("stream p50", ">10"),
    ("events/s", ">9"),
    ("chunks", ">6"),
    ("msgs", ">5"),
    ("+TTFT ms", ">8"),
    ("x events/s", ">10"),
)


@dataclass
class Row:
    """One scenario at one concurrency: its figures, or why there are none."""

    scenario: str
    title: str
    connections: int
    result: LoadResult | None = None
    failure: str | None = None
    # Why the scenario did not run here (not a failure: e.g. a feature not on main yet).
    skipped: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    # The part of each process's share its main thread used (a processor's event loop).
    main_thread_cpu: dict[str, float] = field(default_factory=dict)
    ext_proc_msgs_per_stream: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and (self.result is not None or self.skipped is not None)


@dataclass(frozen=True, slots=True)
class Comparison:
    """A gateway row against (a) and (b) at the same concurrency (None where one is missing)."""

    connections: int
    over_a: float | None
    over_b: float | None
    p50_added_over_a_ms: float | None
    p99_added_over_a_ms: float | None
    p50_added_over_b_ms: float | None


def cores() -> int:
    """The cores this run may use (an affinity mask may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's 1-minute load average: above the core count, other tenants competed."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def machine_note(load_before: float | None = None, load_after: float | None = None) -> str:
    note = (
        f"machine: {cores()} cores shared by Envoy, the processor, the upstream and the load "
        "generator; absolute figures drift between runs, compare ratios within one run."
    )
    if load_before is not None and load_after is not None:
        note += (
            f"\nload average (1 min) {load_before:.1f} before the run, {load_after:.1f} after"
            f" (above {cores()}: other processes competed for the cores; figures are noisy)"
        )
    return note


# The rows that run the real gateway; each is compared with (a) and (b).
GATEWAY_SCENARIOS = ("c", "r", "prod", "d", "e", "f", "w1", "w2")


def result_of(rows: Sequence[Row], key: str, connections: int) -> LoadResult | None:
    found = [r for r in rows if r.scenario == key and r.connections == connections and r.ok]
    return found[0].result if found else None


def compare(rows: Sequence[Row], connections: int, gateway: str = "c") -> Comparison:
    def result(key: str) -> LoadResult | None:
        return result_of(rows, key, connections)

    a, b, c = result("a"), result("b"), result(gateway)
    return Comparison(
        connections=connections,
        over_a=c.requests_per_s / a.requests_per_s if a and c else None,
        over_b=c.requests_per_s / b.requests_per_s if b and c else None,
        p50_added_over_a_ms=c.p50_ms - a.p50_ms if a and c else None,
        p99_added_over_a_ms=c.p99_ms - a.p99_ms if a and c else None,
        p50_added_over_b_ms=c.p50_ms - b.p50_ms if b and c else None,
    )


def format_table(rows: Sequence[Row]) -> str:
    lines = [_line(_COLUMNS, (name for name, _ in _COLUMNS))]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(_line(_COLUMNS, _cells(row, rows)))
        if row.failure:
            lines.append(f"    failed: {row.failure}")
        elif row.skipped:
            lines.append(f"    {row.skipped}")
    return "\n".join(lines)


def format_stream_table(rows: Sequence[StreamRow]) -> str:
    """TTFT and events/s per streaming row; the gateway row against the direct one."""
    events = rows[0].events_per_stream if rows else 0
    lines = [
        f"Streaming: {events:,} chat.completion.chunk events + [DONE] per answer "
        "(times in ms; chunks: transfer chunks received; msgs: ext_proc messages per stream)",
        _line(_STREAM_COLUMNS, (name for name, _ in _STREAM_COLUMNS)),
    ]
    lines.append("-" * len(lines[1]))
    direct = next((r for r in rows if r.scenario == "sa" and r.ok), None)
    for row in rows:
        cells = [row.title, str(len(row.samples))] + ["-"] * 8
        if row.ok:
            cells[2:8] = [
                f"{row.ttft_p50_ms:.2f}",
                f"{row.ttft_p90_ms:.2f}",
                f"{row.total_p50_ms:.2f}",
                f"{row.events_per_s:,.0f}",
                f"{row.chunks_p50:.0f}",
                _maybe(row.ext_proc_msgs_per_stream, "{:.1f}"),
            ]
            if direct is not None and row is not direct:
                cells[8] = f"{row.ttft_p50_ms - direct.ttft_p50_ms:+.2f}"
                cells[9] = f"{row.events_per_s / direct.events_per_s:.2f}"
            else:
                cells[8:10] = ["", ""]
        lines.append(_line(_STREAM_COLUMNS, cells))
        if row.failure:
            lines.append(f"    failed: {row.failure}")
    return "\n".join(lines)


def format_memory(row: MemoryRow) -> str:
    lines = [f"Memory: {row.title}"]
    if row.ok:
        per_process = ", ".join(
            f"{name} {row.rss_ready.get(name, 0) / MB:.0f} -> {rss / MB:.0f} MB"
            f" (private {row.anon_after.get(name, 0) / MB:.0f} MB)"
            for name, rss in row.rss_after.items()
        )
        lines.append(f"  RSS per gateway process, ready -> after the load: {per_process}")
        if row.requests_per_s is not None:
            lines.append(
                f"  {row.subjects:,} requests, each with another key, all 200, "
                f"at {row.requests_per_s:.0f} req/s"
            )
    if row.failure:
        lines.append(f"    failed: {row.failure}")
    return "\n".join(lines)


def format_auth_cost(rows: Sequence[Row], connections: Sequence[int]) -> str:
    """What the variants (production pipeline, JWT, Anthropic, quota rules) add over (c)."""
    lines = []
    for key, label in (
        ("prod", "production pipeline vs default config"),
        ("d", "JWT (cached) vs API key"),
        ("e", "Anthropic translated vs OpenAI"),
        ("f", "3 quota rules vs none"),
    ):
        for n in connections:
            base, other = result_of(rows, "c", n), result_of(rows, key, n)
            if base and other:
                lines.append(
                    f"{label} at c={n}: p50 {other.p50_ms - base.p50_ms:+.2f} ms, "
                    f"req/s x{other.requests_per_s / base.requests_per_s:.2f}"
                )
    return "\n".join(lines)


def format_cpu(
    rows: Sequence[Row], streams: Sequence[StreamRow] = (), memory: Sequence[MemoryRow] = ()
) -> str:
    """Per row: each process's share of one core, and how many ext_proc messages a stream had."""
    lines = ["CPU during each measurement (% of one core):"]
    entries: list[tuple[str, dict[str, float], float | None]] = [
        (f"{row.title:<30} c={row.connections:<3}", row.cpu, row.ext_proc_msgs_per_stream)
        for row in rows
    ]
    entries += [(f"{row.title:<36}", row.cpu, row.ext_proc_msgs_per_stream) for row in streams]
    entries += [(f"{row.title[:36]:<36}", row.cpu, None) for row in memory]
    for label, cpu, messages in entries:
        if not cpu:
            continue
        shares = "  ".join(f"{name} {share:.0f}%" for name, share in cpu.items())
        line = f"  {label} {shares}  total {sum(cpu.values()):.0f}%"
        if messages is not None:
            line += f"  (ext_proc msgs/stream {messages:.2f})"
        lines.append(line)
    return "\n".join(lines)


def cpu_per_request(row: Row, main_thread: bool = False) -> dict[str, float]:
    """Each process's CPU time per request of a load row, in microseconds (empty: no figures);
    with ``main_thread``, the processors' event loop threads alone (``is_processor``).

    The CPU shares are sampled over the same window wrk measured, so a share of one
    core divided by the request rate is the CPU each request cost that process."""
    shares = row.main_thread_cpu if main_thread else row.cpu
    if row.result is None or not shares or row.result.requests_per_s <= 0:
        return {}
    rate = row.result.requests_per_s
    return {
        name: share / 100.0 / rate * 1e6
        for name, share in shares.items()
        if is_processor(name) or not main_thread
    }


def is_processor(name: str) -> bool:
    """A Python ext_proc processor's process (echo, replay, the gateway, its workers):
    its main thread runs the event loop. Envoy's main thread serves no requests."""
    return name in ("processor", "gateway") or name.startswith("worker")


def format_cpu_per_request(rows: Sequence[Row]) -> str:
    """The load rows' CPU per request by process: where the cost of a request goes. A
    Python processor's figure also shows, in brackets, its event loop thread's part;
    the rest is its other threads (grpc's poller and I/O threads, the log writer)."""
    lines = ["CPU per request (us; each process's CPU over the row's req/s):"]
    for row in rows:
        costs = cpu_per_request(row)
        if not costs:
            continue
        loops = cpu_per_request(row, main_thread=True)
        parts = "  ".join(
            f"{name} {cost:.0f}" + (f" (loop {loops[name]:.0f})" if name in loops else "")
            for name, cost in costs.items()
        )
        label = f"{row.title:<30} c={row.connections:<3}"
        lines.append(f"  {label} {parts}  total {sum(costs.values()):.0f}")
    return "\n".join(lines)


def write_json(
    path: Path,
    document: dict[str, Any],
) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def json_document(
    rows: Sequence[Row],
    streams: Sequence[StreamRow],
    memory: Sequence[MemoryRow],
    targets: list[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    connections = sorted({row.connections for row in rows})
    return {
        "machine": {"cores": cores(), "note": machine_note(), "load_average": load_average()},
        "settings": settings,
        "rows": [_row_json(row) for row in rows],
        "comparisons": [
            {"gateway_scenario": key, **_comparison_json(compare(rows, n, key))}
            for key in GATEWAY_SCENARIOS
            for n in connections
            if result_of(rows, key, n) is not None
        ],
        "streams": [_stream_json(row) for row in streams],
        "memory": [_memory_json(row) for row in memory],
        "targets": targets,
    }


def _cells(row: Row, rows: Sequence[Row]) -> list[str]:
    result = row.result
    figures = ["-"] * 4
    if result is not None:
        figures = [
            f"{result.requests_per_s:.0f}",
            f"{result.p50_ms:.2f}",
            f"{result.p99_ms:.2f}",
            str(result.errors),
        ]
    ratios = [""] * 5
    if row.scenario in GATEWAY_SCENARIOS and result is not None:
        comparison = compare(rows, row.connections, row.scenario)
        ratios = [
            _maybe(comparison.over_a, "{:.2f}"),
            _maybe(comparison.over_b, "{:.2f}"),
            _maybe(comparison.p50_added_over_a_ms, "{:+.2f}"),
            _maybe(comparison.p99_added_over_a_ms, "{:+.2f}"),
            _maybe(comparison.p50_added_over_b_ms, "{:+.2f}"),
        ]
    return [row.title, str(row.connections), *figures, *ratios]


def _line(columns: Sequence[tuple[str, str]], cells: Any) -> str:
    return "  ".join(
        f"{cell:{spec}}" for cell, (_, spec) in zip(cells, columns, strict=True)
    ).rstrip()


def _maybe(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def _row_json(row: Row) -> dict[str, Any]:
    result = row.result
    return {
        "scenario": row.scenario,
        "title": row.title,
        "connections": row.connections,
        "ok": row.ok,
        "failure": row.failure,
        "skipped": row.skipped,
        "requests_per_s": result.requests_per_s if result else None,
        "p50_ms": result.p50_ms if result else None,
        "p99_ms": result.p99_ms if result else None,
        "requests": result.requests if result else None,
        "errors": result.errors if result else None,
        "cpu_percent_of_one_core": row.cpu,
        "cpu_us_per_request": _rounded(cpu_per_request(row)),
        "cpu_us_per_request_main_thread": _rounded(cpu_per_request(row, main_thread=True)),
        "ext_proc_msgs_per_stream": row.ext_proc_msgs_per_stream,
    }


def _rounded(costs: dict[str, float]) -> dict[str, float]:
    return {name: round(cost, 1) for name, cost in costs.items()}


def _comparison_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "connections": comparison.connections,
        "requests_per_s_over_a": comparison.over_a,
        "requests_per_s_over_b": comparison.over_b,
        "p50_added_over_a_ms": comparison.p50_added_over_a_ms,
        "p99_added_over_a_ms": comparison.p99_added_over_a_ms,
        "p50_added_over_b_ms": comparison.p50_added_over_b_ms,
    }


def _stream_json(row: StreamRow) -> dict[str, Any]:
    return {
        "scenario": row.scenario,
        "title": row.title,
        "ok": row.ok,
        "failure": row.failure,
        "events_per_stream": row.events_per_stream,
        "streams": len(row.samples),
        "ttft_p50_ms": row.ttft_p50_ms if row.ok else None,
        "ttft_p90_ms": row.ttft_p90_ms if row.ok else None,
        "stream_p50_ms": row.total_p50_ms if row.ok else None,
        "events_per_s": row.events_per_s if row.ok else None,
        "chunks_received_p50": row.chunks_p50 if row.ok else None,
        "ext_proc_msgs_per_stream": row.ext_proc_msgs_per_stream,
        "cpu_percent_of_one_core": row.cpu,
    }


def _memory_json(row: MemoryRow) -> dict[str, Any]:
    return {
        "title": row.title,
        "ok": row.ok,
        "failure": row.failure,
        "api_keys": row.keys,
        "limit_rules": row.rules,
        "subjects": row.subjects,
        "rss_ready_bytes": row.rss_ready,
        "rss_after_bytes": row.rss_after,
        "rss_anon_after_bytes": row.anon_after,
        "requests_per_s": row.requests_per_s,
        "cpu_percent_of_one_core": row.cpu,
    }
