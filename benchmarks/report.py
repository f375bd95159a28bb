"""Turn measured rows into the printed table, the CPU breakdown and the JSON file.

Ratios compare scenarios of the same run only: absolute figures drift between
runs on a shared machine, ratios hold (DESIGN.md). On each (c) row: c/a and c/b
are the gateway's req/s over Envoy direct and over the echo processor; c-b p50
is what the gateway's own work adds to the median latency, in ms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load_generator import LoadResult

_COLUMNS = (
    ("scenario", "<27"),
    ("conns", ">5"),
    ("req/s", ">8"),
    ("p50 ms", ">7"),
    ("p99 ms", ">7"),
    ("errors", ">6"),
    ("c/a req/s", ">9"),
    ("c/b req/s", ">9"),
    ("c-b p50 ms", ">10"),
)


@dataclass
class Row:
    """One scenario at one concurrency: its figures, or why there are none."""

    scenario: str
    title: str
    connections: int
    result: LoadResult | None = None
    failure: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    ext_proc_msgs_per_stream: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.result is not None


@dataclass(frozen=True, slots=True)
class Comparison:
    connections: int
    c_over_a: float | None
    c_over_b: float | None
    c_minus_b_p50_ms: float | None


def cores() -> int:
    """The cores this run may use (an affinity mask may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_note() -> str:
    return (
        f"machine: {cores()} cores shared by Envoy, the processor, the upstream and the load "
        "generator; absolute figures drift between runs, compare ratios within one run."
    )


# The rows that run the real gateway; each is compared with (a) and (b).
GATEWAY_SCENARIOS = ("c", "d", "e", "f")


def result_of(rows: list[Row], key: str, connections: int) -> LoadResult | None:
    found = [r for r in rows if r.scenario == key and r.connections == connections and r.ok]
    return found[0].result if found else None


def compare(rows: list[Row], connections: int, gateway: str = "c") -> Comparison:
    def result(key: str) -> LoadResult | None:
        return result_of(rows, key, connections)

    a, b, c = result("a"), result("b"), result(gateway)
    return Comparison(
        connections=connections,
        c_over_a=c.requests_per_s / a.requests_per_s if a and c else None,
        c_over_b=c.requests_per_s / b.requests_per_s if b and c else None,
        c_minus_b_p50_ms=c.p50_ms - b.p50_ms if b and c else None,
    )


def format_table(rows: list[Row]) -> str:
    lines = [_line(name for name, _ in _COLUMNS)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(_line(_cells(row, rows)))
        if row.failure:
            lines.append(f"    failed: {row.failure}")
    return "\n".join(lines)


def format_auth_cost(rows: list[Row], connections: list[int]) -> str:
    """What JWT auth (cached token), translation to Anthropic and quota rules add over (c)."""
    lines = []
    for key, label in (
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


def format_cpu(rows: list[Row]) -> str:
    """Per row: each process's share of one core, and how many ext_proc messages a stream had."""
    lines = ["CPU during each measurement (% of one core):"]
    for row in rows:
        if not row.cpu:
            continue
        shares = "  ".join(f"{name} {share:.0f}%" for name, share in row.cpu.items())
        total = sum(row.cpu.values())
        line = f"  {row.title:<27} c={row.connections:<3} {shares}  total {total:.0f}%"
        if row.ext_proc_msgs_per_stream is not None:
            line += f"  (ext_proc msgs/stream {row.ext_proc_msgs_per_stream:.2f})"
        lines.append(line)
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], connections: list[int], duration_s: float) -> None:
    document: dict[str, Any] = {
        "machine": {"cores": cores(), "note": machine_note()},
        "duration_s": duration_s,
        "rows": [_row_json(row) for row in rows],
        "comparisons": [
            {"gateway_scenario": key, **_comparison_json(compare(rows, n, key))}
            for key in GATEWAY_SCENARIOS
            for n in connections
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _cells(row: Row, rows: list[Row]) -> list[str]:
    result = row.result
    figures = ["-"] * 4
    if result is not None:
        figures = [
            f"{result.requests_per_s:.0f}",
            f"{result.p50_ms:.2f}",
            f"{result.p99_ms:.2f}",
            str(result.errors),
        ]
    ratios = ["", "", ""]
    if row.scenario in GATEWAY_SCENARIOS:
        comparison = compare(rows, row.connections, row.scenario)
        ratios = [
            _maybe(comparison.c_over_a, "{:.2f}"),
            _maybe(comparison.c_over_b, "{:.2f}"),
            _maybe(comparison.c_minus_b_p50_ms, "{:+.2f}"),
        ]
    return [row.title, str(row.connections), *figures, *ratios]


def _line(cells: Any) -> str:
    return "  ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(cells, _COLUMNS, strict=True))


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
        "requests_per_s": result.requests_per_s if result else None,
        "p50_ms": result.p50_ms if result else None,
        "p99_ms": result.p99_ms if result else None,
        "requests": result.requests if result else None,
        "errors": result.errors if result else None,
        "cpu_percent_of_one_core": row.cpu,
        "ext_proc_msgs_per_stream": row.ext_proc_msgs_per_stream,
    }


def _comparison_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "connections": comparison.connections,
        "c_over_a_requests_per_s": comparison.c_over_a,
        "c_over_b_requests_per_s": comparison.c_over_b,
        "c_minus_b_p50_ms": comparison.c_minus_b_p50_ms,
    }
