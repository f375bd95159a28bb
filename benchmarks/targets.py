"""Issue #10's targets (and issue #2's), each with this run's figure, in one table.

Every figure is a ratio or a difference between rows of the same run, so it
holds on a shared machine where absolute figures drift. A target whose rows
did not run (``--only``), failed or were skipped reads "-" and says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.memory import MemoryRow
from benchmarks.report import Row, compare, result_of
from benchmarks.streaming import StreamRow

_COLUMNS = (("target", "<58"), ("measured", ">10"), ("goal", ">10"), ("", "<9"))


@dataclass(frozen=True, slots=True)
class TargetFigure:
    name: str
    measured: float | None
    goal: float | None  # None: reported, no goal
    unit: str  # "ms" (an added time), "x" (a ratio), "MB"
    at_most: bool  # True: the figure must stay at or under the goal
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.goal is None:
            return None
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal

    def cells(self) -> list[str]:
        verdict = {True: "met", False: "NOT MET", None: ""}[self.met]
        goal = "report" if self.goal is None else ("<= " if self.at_most else ">= ")
        if self.goal is not None:
            goal += _value(self.goal, self.unit, signed=False)
        measured = "-" if self.measured is None else _value(self.measured, self.unit)
        return [self.name, measured, goal, verdict]


def figures(
    rows: Sequence[Row],
    streams: Sequence[StreamRow],
    memory: Sequence[MemoryRow],
    prod_title: str,
    skipped_workers: str | None,
) -> list[TargetFigure]:
    def load(key: str, n: int, pick: Callable[..., float | None]) -> float | None:
        return pick(compare(rows, n, key)) if result_of(rows, key, n) else None

    prod = prod_title.removeprefix("(p) ")
    direct = next((s for s in streams if s.scenario == "sa" and s.ok), None)
    gateway = next((s for s in streams if s.scenario == "sg" and s.ok), None)
    one, two = result_of(rows, "w1", 16), result_of(rows, "w2", 16)
    mem = next((m for m in memory if m.ok), None)
    mem_name = "5. RSS per worker: 10k keys, 1k rules, 10k subjects"
    if mem is not None and mem.subjects != 10_000:
        mem_name = (
            f"5. RSS per worker: {mem.keys:,} keys, {mem.rules:,} rules, {mem.subjects:,} subj."
        )
    return [
        TargetFigure(
            f"1. {prod}: p50 added over (a), c=1",
            load("prod", 1, lambda c: c.p50_added_over_a_ms), 1.0, "ms", at_most=True,
        ),
        TargetFigure(
            f"1. {prod}: p99 added over (a), c=1",
            load("prod", 1, lambda c: c.p99_added_over_a_ms), 3.0, "ms", at_most=True,
        ),
        TargetFigure(
            f"2. {prod}: req/s over (b) echo, c=16",
            load("prod", 16, lambda c: c.over_b), 1.0, "x", at_most=False,
        ),
        TargetFigure(
            "3. stream: TTFT added over envoy direct",
            gateway.ttft_p50_ms - direct.ttft_p50_ms if gateway and direct else None,
            1.0, "ms", at_most=True,
        ),
        TargetFigure(
            "3. stream: events/s over envoy direct",
            gateway.events_per_s / direct.events_per_s if gateway and direct else None,
            0.5, "x", at_most=False,
        ),
        TargetFigure(
            "4. 2 workers over 1 worker: req/s, c=16",
            two.requests_per_s / one.requests_per_s if one and two else None,
            None, "x", at_most=False, note=skipped_workers or "",
        ),
        TargetFigure(
            mem_name, mem.max_rss_mb if mem else None, 150.0, "MB", at_most=True,
        ),
        TargetFigure(
            "#2: (c) default config: req/s over (b) echo, c=16",
            load("c", 16, lambda c: c.over_b), 0.9, "x", at_most=False,
        ),
        TargetFigure(
            "#2: (c) default config: p50 added over (b) echo, c=1",
            load("c", 1, lambda c: c.p50_added_over_b_ms), 0.3, "ms", at_most=True,
        ),
        # The same two figures for (c)'s protocol with none of its work: (c)'s ceiling.
        TargetFigure(
            "#2 ceiling, (r) no work: req/s over (b) echo, c=16",
            load("r", 16, lambda c: c.over_b), None, "x", at_most=False,
        ),
        TargetFigure(
            "#2 ceiling, (r) no work: p50 added over (b) echo, c=1",
            load("r", 1, lambda c: c.p50_added_over_b_ms), None, "ms", at_most=True,
        ),
    ]  # fmt: skip


def format_targets(found: Sequence[TargetFigure]) -> str:
    header = _line([name for name, _ in _COLUMNS]).rstrip()
    lines = [
        "Targets (issue #10, and issue #2's), from this run's rows; noisy on a shared machine",
        header,
        "-" * len(header),
    ]
    for figure in found:
        lines.append(_line(figure.cells()).rstrip())
        if figure.note and figure.measured is None:
            lines.append(f"    {figure.note}")
    return "\n".join(lines)


def targets_json(found: Sequence[TargetFigure]) -> list[dict[str, Any]]:
    return [{**asdict(figure), "met": figure.met} for figure in found]


def format_targets_markdown(found: Sequence[TargetFigure]) -> str:
    """The targets as the Markdown table of docs/performance.md."""
    lines = ["| target | measured | goal | |", "|---|---|---|---|"]
    for figure in found:
        name, measured, goal, verdict = figure.cells()
        if figure.note and figure.measured is None:
            verdict = figure.note
        lines.append(f"| {name} | {measured} | {goal} | {verdict.lower()} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.targets bench.json``: a saved run's targets as Markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=main.__doc__)
    parser.add_argument("json", type=Path, help="written by python -m benchmarks.run --json")
    document = json.loads(parser.parse_args(argv).json.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(TargetFigure)}
    found = [
        TargetFigure(**{k: v for k, v in entry.items() if k in fields})
        for entry in document["targets"]
    ]
    print(format_targets_markdown(found))
    return 0


def _value(value: float, unit: str, signed: bool = True) -> str:
    if unit == "ms":
        return f"{value:+.2f} ms" if signed else f"{value:.1f} ms"
    if unit == "x":
        return f"x{value:.2f}"
    return f"{value:.0f} {unit}"


def _line(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:{spec}}" for cell, (_, spec) in zip(cells, _COLUMNS, strict=True))


if __name__ == "__main__":
    raise SystemExit(main())
