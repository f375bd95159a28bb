"""The benchmark's configs and its targets table: what it runs is valid, what it prints adds up."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.configs import (
    CHAT_ROUTE,
    Overlay,
    apply_overlay,
    memory_key,
    memory_overlay,
    prod_overlay,
    write_config,
)
from benchmarks.cpu import CpuMeter
from benchmarks.interleave import Window, apply_windows
from benchmarks.load_generator import LoadResult
from benchmarks.report import Row, cpu_per_request, format_cpu_per_request, json_document
from benchmarks.targets import TargetFigure, figures, format_targets, format_targets_markdown
from extproc.config.loader import load_config


def test_overlays_merge_dicts_replace_lists_and_reach_routes_by_name() -> None:
    base = {"server": {"grace_period_s": 10, "grpc_address": "x"}, "routes": [{"name": "r"}]}
    overlay = Overlay({"server": {"workers": 2}, "quotas": {"rules": [1]}}, {"r": {"k": "v"}})
    merged = apply_overlay(base, overlay)
    assert merged["server"] == {"grace_period_s": 10, "grpc_address": "x", "workers": 2}
    assert merged["routes"] == [{"name": "r", "k": "v"}]
    assert base["server"] == {"grace_period_s": 10, "grpc_address": "x"}  # not mutated


def test_the_production_and_memory_configs_are_valid_gateway_configs(tmp_path: Path) -> None:
    prod = load_config(write_config(tmp_path / "prod.yaml", prod_overlay()), {})
    assert len(prod.quotas.rules) >= 1
    assert any(route.name == CHAT_ROUTE for route in prod.routes)

    memory = load_config(write_config(tmp_path / "mem.yaml", memory_overlay(40, 10)), {})
    assert len(memory.auth.api_keys) == 40
    assert len(memory.quotas.rules) == 10
    digest = hashlib.sha256(memory_key(7).encode()).hexdigest()
    assert memory.auth.api_keys[7].key_sha256 == digest
    # The digest, never the secret, is what the file holds.
    assert memory_key(7) not in (tmp_path / "mem.yaml").read_text()
    assert yaml.safe_load((tmp_path / "mem.yaml").read_text())["version"] == 1


def _row(key: str, connections: int, rps: float, p50: float, p99: float) -> Row:
    result = LoadResult(rps, p50, p99, requests=1000, non_2xx_3xx=0, socket_errors=0)
    return Row(key, key, connections, result=result)


def test_targets_compare_rows_of_the_run_and_say_which_are_met() -> None:
    rows = [
        _row("a", 1, 5000, 0.20, 0.50),
        _row("b", 1, 700, 1.10, 2.00),
        _row("prod", 1, 600, 1.00, 4.00),
        _row("a", 16, 9000, 1.0, 3.0),
        _row("b", 16, 1400, 11.0, 20.0),
        _row("prod", 16, 1500, 10.0, 30.0),
    ]
    found = {f.name: f for f in figures(rows, [], [], "(p) production", None)}
    p50 = found["1. production: p50 added over (a), c=1"]
    assert round(p50.measured or 0, 2) == 0.8 and p50.met is True
    p99 = found["1. production: p99 added over (a), c=1"]
    assert round(p99.measured or 0, 2) == 3.5 and p99.met is False
    throughput = found["2. production: req/s over (b) echo, c=16"]
    assert round(throughput.measured or 0, 3) == 1.071 and throughput.met is True
    # Rows that did not run give no figure and no verdict.
    stream = found["3. stream: TTFT added over envoy direct"]
    assert stream.measured is None and stream.met is None
    table = format_targets(list(found.values()))
    assert "+0.80 ms" in table and "NOT MET" in table and "x1.07" in table


def test_a_reported_figure_without_goal_has_no_verdict() -> None:
    figure = TargetFigure("4. workers", 1.6, None, "x", at_most=False)
    assert figure.met is None
    assert figure.cells()[1:3] == ["x1.60", "report"]


def test_interleaved_windows_combine_into_one_row_robust_to_one_bad_window() -> None:
    def window(rps: float, p50: float, p99: float, streams: int, errors: int = 0) -> Window:
        result = LoadResult(rps, p50, p99, int(rps), non_2xx_3xx=errors, socket_errors=0)
        cpu = {"envoy": rps / 100, "gateway": 50.0}
        return Window(result, cpu, ((0, 0), (streams, 4 * streams)))

    row = Row("prod", "(p) production", 16)
    # The middle window was hit by a neighbour's burst.
    apply_windows(row, [window(1000, 10.0, 20.0, 100), window(400, 40.0, 90.0, 40),
                        window(1100, 11.0, 22.0, 110)])  # fmt: skip
    assert row.result is not None and row.failure is None
    assert row.result.requests_per_s == 2500 / 3
    assert (row.result.p50_ms, row.result.p99_ms) == (11.0, 22.0)
    assert row.cpu == {"envoy": 2500 / 300, "gateway": 50.0}
    assert row.ext_proc_msgs_per_stream == 4.0

    failed = Row("prod", "(p) production", 1)
    apply_windows(failed, [window(1000, 1.0, 2.0, 10), window(1000, 1.0, 2.0, 10, errors=3)])
    assert failed.failure == "3 non-2xx/3xx responses, 0 socket errors"


def test_the_markdown_targets_table_carries_figures_and_skip_notes() -> None:
    found = [
        TargetFigure("5. RSS per worker", 140.4, 150.0, "MB", at_most=True),
        TargetFigure("4. workers", None, None, "x", at_most=False, note="skipped: not on main"),
    ]
    table = format_targets_markdown(found).splitlines()
    assert table[2] == "| 5. RSS per worker | 140 MB | <= 150 MB | met |"
    assert table[3] == "| 4. workers | - | report | skipped: not on main |"


def test_cpu_per_request_divides_each_process_share_by_the_request_rate() -> None:
    row = _row("c", 16, 2000, 8.0, 16.0)
    row.cpu.update({"envoy": 44.0, "gateway": 120.0})
    assert cpu_per_request(row) == {"envoy": 220.0, "gateway": 600.0}
    printed = format_cpu_per_request([row, _row("a", 1, 5000, 0.2, 0.5)])
    assert "envoy 220  gateway 600  total 820" in printed
    # A row without CPU samples (or without figures) prints no line.
    assert len(printed.splitlines()) == 2


def test_a_processors_event_loop_thread_is_shown_as_a_part_of_its_cpu() -> None:
    row = _row("c", 16, 2000, 8.0, 16.0)
    row.cpu.update({"envoy": 44.0, "gateway": 120.0})
    # Envoy's main thread serves no requests: only the processor's loop is shown.
    row.main_thread_cpu.update({"envoy": 1.0, "gateway": 80.0})
    assert cpu_per_request(row, main_thread=True) == {"gateway": 400.0}
    printed = format_cpu_per_request([row])
    assert "envoy 220  gateway 600 (loop 400)  total 820" in printed
    assert json_document([row], [], [], [], {})["rows"][0]["cpu_us_per_request_main_thread"] == {
        "gateway": 400.0
    }


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_cpu_meter_tells_a_processs_main_thread_from_its_other_threads() -> None:
    # A process whose main thread sleeps while a second thread spins.
    script = (
        "import threading, time\n"
        "def spin():\n"
        "    end = time.monotonic() + 30\n"
        "    while time.monotonic() < end: pass\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        time.sleep(0.2)  # let the spinning thread start
        with CpuMeter({"worker1": process.pid}) as meter:
            # Until the spinner has run a few clock ticks: on a busy machine a second of
            # wall time may give it little CPU, and the shares are compared, not timed.
            start = _process_cpu_seconds(process.pid)
            deadline = time.monotonic() + 20
            while _process_cpu_seconds(process.pid) - start < 0.3 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    assert meter.shares["worker1"] > 0
    assert meter.main_thread_shares["worker1"] < meter.shares["worker1"] / 4
