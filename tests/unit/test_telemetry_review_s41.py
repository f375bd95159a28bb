"""Telemetry review, s41: what an operator reads in the log line, on /metrics and in stderr
when an upstream sends odd values or a log sink fails.

- A provider reporting a token count past 64 bits (an unsigned -1: 18446744073709551615)
  must not lose the request's log line, nor with it the request's metrics and rollup.
- An MCP server's JSON-RPC error whose code is JSON's ``true`` is no error code: the line
  must still validate against docs/log-schema.json.
- The agent metrics' ``status`` and ``method`` labels are the gateway's fixed values: a
  low ``max_label_values`` must not fold ``denied`` or ``rate_limited`` into ``other``.
- Request log lines a sink lost (its queue full, or a write that failed) are counted on
  /metrics and said on stderr, stdout's failures included.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.log_writer import LineWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.workers import _BoundedCollector
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents import TEAM2, with_agents

SCHEMA = Draft202012Validator(
    orjson.loads(Path("docs/log-schema.json").read_bytes()), format_checker=FormatChecker()
)
AUTH = {"authorization": "Bearer team1-key"}
CHAT = "/v1/chat/completions"
CHAT_BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
# What a server that keeps counts unsigned prints for -1.
UNSIGNED_MINUS_ONE = 2**64 - 1


def gateway(config: GatewayConfig) -> tuple[Any, Services]:
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    return processor_for(config, services), services


def lines_as_written(services: Services) -> list[dict[str, Any]]:
    """The log lines, read by a parser that keeps integers of any size as integers
    (orjson reads one past 64 bits as a float)."""
    text = services.access_log.buffer.getvalue().decode()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines()]


def schema_errors(line: dict[str, Any]) -> list[str]:
    return [f"{list(error.absolute_path)}: {error.message}" for error in SCHEMA.iter_errors(line)]


def page_samples(source: Collector | CollectorRegistry, name: str) -> dict[frozenset[Any], float]:
    if isinstance(source, CollectorRegistry):
        registry = source
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(source)
    text = generate_latest(registry).decode()
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


# --- a token count past 64 bits -------------------------------------------------------------


def answer_with_usage(usage: dict[str, int]) -> bytes:
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


async def test_a_token_count_past_64_bits_keeps_the_line_and_the_metrics(
    config: GatewayConfig,
) -> None:
    """An OpenAI-compatible server reports prompt_tokens 18446744073709551615 (its -1 as
    an unsigned 64-bit number). orjson refused to write the line's total (past 64 bits):
    the request vanished from the log, and, the line being written first, from
    tokens_consumed_total and the usage rollup too. Such a count is no count
    (translators.token_counts): the line is written, with the gateway's estimate, and the
    metrics grow by the line's counts."""
    processor, services = gateway(config)
    usage = {"prompt_tokens": UNSIGNED_MINUS_ONE, "completion_tokens": 5, "total_tokens": 4}
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(CHAT_BODY),
            response_headers(200),
            response_body(answer_with_usage(usage)),
        ],
    )
    [line] = lines_as_written(services)
    assert not schema_errors(line)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert 0 < line["prompt_tokens"] < 1000
    assert line["total_tokens"] == line["prompt_tokens"] + line["completion_tokens"]
    tokens = page_samples(services.metrics.registry, "tokens_consumed_total")
    by_type = {dict(labels)["token_type"]: value for labels, value in tokens.items()}
    assert by_type == {
        "prompt": float(line["prompt_tokens"]),
        "completion": float(line["completion_tokens"]),
    }


def test_an_ordinary_line_is_still_written_by_orjson() -> None:
    """The fallback is for values orjson refuses only: an ordinary line is orjson's bytes."""
    log = MemoryLog()
    record = {"request_id": "r", "prompt_tokens": 3, "model": "gpt-4o-mini", "cost_usd": 0.1}
    log.write(record)
    assert log.buffer.getvalue() == orjson.dumps(record) + b"\n"


# --- an agent's JSON-RPC error code ---------------------------------------------------------


async def test_an_mcp_error_whose_code_is_true_logs_no_code(config: GatewayConfig) -> None:
    """A tool server answers {"error": {"code": true}}: bool is an int in Python, so the
    line said "rpc_error_code": true, which docs/log-schema.json (integer or null) refuses."""
    processor, services = gateway(with_agents(config))
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}  # fmt: skip
    answer = b'{"jsonrpc":"2.0","id":5,"error":{"code":true,"message":"no"}}'
    await run_stream(
        processor,
        [
            request_headers("/mcp", headers=TEAM2),
            request_body(orjson.dumps(call)),
            response_headers(200),
            response_body(answer),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["agent"]["status"] == "rpc_error"
    assert line["agent"]["rpc_error_code"] is None
    assert not schema_errors(line)


# --- the agent metrics' fixed labels under a low cap ----------------------------------------

AGENT_STATUSES = ("ok", "tool_error", "rpc_error", "denied", "rate_limited", "upstream_error")
A2A_METHODS = ("message/send", "message/stream", "SendMessage", "SendStreamingMessage")


def test_a_low_label_cap_keeps_the_agent_outcomes_apart(config: GatewayConfig) -> None:
    """An operator with three keys sets max_label_values: 3. docs/agents.md's query for
    refused tool calls (status=~"denied|rate_limited") found nothing: the gateway's own
    outcomes went through the budget and the fourth one seen became `other`."""
    metrics = GatewayMetrics(max_label_values=3)
    agents = metrics.agents
    for status in AGENT_STATUSES:
        agents.child(agents.tool_calls, "tools", "echo", status, "k", "u", "g").inc()
        agents.child(agents.tool_call_duration, "tools", "echo", status).observe(0.1)
    for method in A2A_METHODS:
        agents.child(agents.a2a_messages, "helper", method, "ok", "k", "u", "g").inc()
    pages = (metrics.registry, _BoundedCollector(metrics.registry, 3, with_agents(config)))
    for page in pages:
        calls = page_samples(page, "aigw_mcp_tool_calls_total")
        assert {dict(labels)["status"] for labels in calls} == set(AGENT_STATUSES)
        messages = page_samples(page, "aigw_a2a_messages_total")
        assert {dict(labels)["method"] for labels in messages} == set(A2A_METHODS)


# --- request log lines a sink lost ----------------------------------------------------------


class BrokenStdout:
    """stdout whose reader is gone: every write fails (EPIPE)."""

    def write(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass


class StuckStdout:
    """stdout a log shipper stopped reading: a write waits until released."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def write(self, data: bytes) -> int:
        self.released.wait(10)
        return len(data)

    def flush(self) -> None:
        pass


def lost_lines(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    samples = page_samples(metrics.registry, "aigw_request_log_lost_lines_total")
    return {
        (dict(labels)["sink"], dict(labels)["reason"]): value for labels, value in samples.items()
    }


def test_lines_stdout_could_not_take_are_counted_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The log shipper reading stdout died: each write fails. The lines were lost with
    no word on stderr and no count an alert could read."""
    metrics = GatewayMetrics()
    monkeypatch.setattr("extproc.telemetry.access_log.default_stdout", BrokenStdout)
    log = AccessLog(stdout=True, on_lost=metrics.log_lines_lost)
    with caplog.at_level(logging.WARNING, logger="extproc.telemetry.log_writer"):
        for index in range(3):
            log.write({"request_id": str(index)})
        log.close()
    assert lost_lines(metrics)[("stdout", "write_error")] == 3
    assert any("stdout" in record.getMessage() for record in caplog.records)


def test_lines_dropped_for_a_full_queue_are_counted_on_the_page() -> None:
    """stdout stuck and its queue full: the lines dropped were counted in the writer
    only, which nothing reads; an operator had a warning at the 1st and every 1000th."""
    stuck = StuckStdout()
    metrics = GatewayMetrics()
    writer = LineWriter(stdout=stuck, queue_size=2, on_lost=metrics.log_lines_lost)
    try:
        for _ in range(10):
            writer.submit(b"{}\n")
        # At most the two queued and the one being written got through.
        assert lost_lines(metrics)[("stdout", "queue_full")] == writer.dropped >= 7
    finally:
        stuck.released.set()
        writer.close()


def test_every_lost_line_series_is_on_the_page_from_the_start() -> None:
    """At 0 before the first loss, so that increase() counts the first one."""
    assert lost_lines(GatewayMetrics()) == {
        (sink, reason): 0.0
        for sink in ("file", "stdout")
        for reason in ("queue_full", "write_error")
    }
