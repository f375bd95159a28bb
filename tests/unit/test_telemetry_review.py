"""Content capture, the log writer and metric labels, as reviewed for leaks and blow-ups.

Each test plays a real request through the processor (or drives the real writer
against a real pipe and file) and checks what an operator reads afterwards.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.log_writer import MAX_QUEUED_BYTES, LineWriter, RotatingFile
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
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import play_sse

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
AUTH = {"authorization": "Bearer team1-key"}
# A streamed chat, as an OpenAI client sends it.
STREAMED_HELLO = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
)


def with_telemetry(
    config: GatewayConfig, *, log: dict[str, Any], tracing: dict[str, Any] | None = None
) -> GatewayConfig:
    telemetry = config.telemetry.model_copy(
        update={
            "log": config.telemetry.log.model_copy(update=log),
            "tracing": config.telemetry.tracing.model_copy(update=tracing or {}),
        }
    )
    return config.model_copy(update={"telemetry": telemetry})


def logging_content(config: GatewayConfig, services: Services) -> Processor:
    """A processor whose log lines carry the prompt and the completion."""
    return processor_for(with_telemetry(config, log={"include_content": True}), services)


def lines(services: Services) -> list[dict[str, Any]]:
    return services.access_log.lines()  # type: ignore[attr-defined,no-any-return]


def series(metrics: GatewayMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


# --- content capture of a provider's odd answer ------------------------------------------


async def test_odd_stream_chunk_with_content_logging_keeps_the_line_and_the_usage(
    config: GatewayConfig, services: Services
) -> None:
    processor = logging_content(config, services)
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi","tool_calls":3}}]}\n\n'
        b'data: {"choices":7}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
        b"\n\ndata: [DONE]\n\n"
    )
    await play_sse(processor, CHAT, AUTH, STREAMED_HELLO, [events])
    [line] = lines(services)
    assert line["total_tokens"] == 7
    assert line["completion"] == "Hi"
    tokens = series(services.metrics, "tokens_consumed_total")
    assert sum(tokens.values()) == 7


async def test_deep_tool_input_with_content_logging_keeps_the_line_and_the_usage(
    config: GatewayConfig, services: Services
) -> None:
    processor = logging_content(config, services)
    # A provider's JSON nested deeper than orjson writes (254 levels), though it reads it.
    deep = b"[" * 300 + b'"leaf"' + b"]" * 300
    answer = (
        b'{"type":"message","model":"claude-3-5-haiku-20241022","content":[{"type":"tool_use",'
        b'"id":"t1","name":"f","input":{"x":' + deep + b'}}],"stop_reason":"tool_use",'
        b'"usage":{"input_tokens":3,"output_tokens":4}}'
    )
    await run_stream(
        processor,
        [
            request_headers(MESSAGES, headers={"x-api-key": "team1-key"}),
            request_body(
                orjson.dumps(
                    {
                        "model": "claude-3-5-haiku-latest",
                        "max_tokens": 9,
                        "messages": [{"role": "user", "content": "Hi"}],
                    }
                )
            ),
            response_headers(),
            response_body(answer),
        ],
    )
    [line] = lines(services)
    assert line["total_tokens"] == 7
    assert line["completion"].startswith("[tool_use f]")
    assert sum(series(services.metrics, "tokens_consumed_total").values()) == 7


async def test_odd_answer_with_span_content_capture_still_reaches_the_client(
    config: GatewayConfig, services: Services
) -> None:
    traced = with_telemetry(config, log={}, tracing={"enabled": True, "capture_content": True})
    processor = processor_for(traced, services)
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"choices":true}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
        b"\n\ndata: [DONE]\n\n"
    )
    answers = await play_sse(processor, CHAT, AUTH, STREAMED_HELLO, [events])
    # Every message answered: the client gets the whole stream, not a reset.
    assert len(answers) == 4
    [line] = lines(services)
    assert line["total_tokens"] == 7


# --- the log writer with a stuck stdout ---------------------------------------------------


def _drain(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            into.extend(chunk)


def _wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return bool(condition())


def test_a_stuck_stdout_does_not_starve_the_log_file(tmp_path: Path) -> None:
    """stdout piped to a shipper that stopped reading: the file still gets every line."""
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb")
    path = tmp_path / "requests.log"
    writer = LineWriter(stdout=stuck, file=RotatingFile(path), queue_size=1000)
    line = b"y" * 1000 + b"\n"
    for _ in range(300):  # 300 KB: far more than the pipe's 64 KiB
        writer.submit(line)
    try:
        assert _wait_for(lambda: path.stat().st_size == 300 * len(line))
    finally:
        received = bytearray()
        reader = threading.Thread(target=lambda: _drain(read_end, received))
        reader.start()
        writer.close()
        stuck.close()
        reader.join(10)


def test_queued_lines_are_bounded_in_bytes_not_only_in_count() -> None:
    """Content lines can be a megabyte each: a stuck sink must not hold gigabytes."""
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb")
    writer = LineWriter(stdout=stuck)  # the default queue_size: 100,000 lines
    line = b"z" * (1024 * 1024) + b"\n"
    try:
        for _ in range(300):  # 300 MiB of log lines
            writer.submit(line)
        # What the writer holds for the stuck pipe stays within its byte bound; the
        # rest is dropped and counted (a warning on stderr says so).
        assert writer.queued_bytes <= MAX_QUEUED_BYTES
        assert writer.dropped >= 300 - MAX_QUEUED_BYTES // len(line) - 1
    finally:
        received = bytearray()
        reader = threading.Thread(target=lambda: _drain(read_end, received))
        reader.start()
        writer.close()
        stuck.close()
        reader.join(30)


# --- metric labels a client chooses -------------------------------------------------------


def chat_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]})


COMPLETION = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)


async def test_unknown_models_of_a_404_make_no_model_series(config: GatewayConfig) -> None:
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    processor = processor_for(config, services)
    for index in range(5):
        await run_stream(
            processor,
            [request_headers(CHAT, headers=AUTH), request_body(chat_body(f"junk-{index}"))],
        )
    assert [line["http_status_code"] for line in lines(services)] == [404] * 5
    # The log line keeps what the client asked for; the metric does not make it a series.
    assert lines(services)[0]["model"] == "junk-0"
    requests = series(services.metrics, "aigw_requests_total")
    assert {dict(labels)["model"] for labels in requests} == {""}
    assert sum(requests.values()) == 5


async def test_made_up_model_names_cannot_push_configured_models_into_other(
    config: GatewayConfig,
) -> None:
    """A client sends many made-up names the `claude-` prefix routes to the provider (which
    answers 404): the configured models must still be counted under their own names."""
    services = Services(metrics=GatewayMetrics(max_label_values=5), access_log=MemoryLog())
    processor = processor_for(config, services)
    not_found = orjson.dumps(
        {"type": "error", "error": {"type": "not_found_error", "message": "model not found"}}
    )
    for index in range(10):
        await run_stream(
            processor,
            [
                request_headers(MESSAGES, headers={"x-api-key": "team1-key"}),
                request_body(
                    orjson.dumps(
                        {
                            "model": f"claude-junk-{index}",
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "Hi"}],
                        }
                    )
                ),
                response_headers(404),
                response_body(not_found),
            ],
        )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat_body("gpt-4o-mini")),
            response_headers(),
            response_body(COMPLETION),
        ],
    )
    tokens = series(services.metrics, "tokens_consumed_total")
    assert {dict(labels)["model"] for labels in tokens} == {"gpt-4o-mini"}
    costs = series(services.metrics, "aigw_cost_usd_total")
    assert {dict(labels)["model"] for labels in costs} == {"gpt-4o-mini"}


# --- the size cap of content --------------------------------------------------------------


async def test_a_long_conversation_is_cut_at_the_cap_as_a_whole(
    config: GatewayConfig, services: Services
) -> None:
    """max_content_chars bounds the prompt field, not each of its messages: a long
    conversation of short messages must not make a line many times the cap."""
    processor = processor_for(
        with_telemetry(config, log={"include_content": True, "max_content_chars": 100}), services
    )
    turns = [
        {"role": "user" if index % 2 == 0 else "assistant", "content": f"turn {index:03d} " * 5}
        for index in range(40)
    ]
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(orjson.dumps({"model": "gpt-4o-mini", "messages": turns})),
            response_headers(),
            response_body(COMPLETION),
        ],
    )
    [line] = lines(services)
    assert sum(len(message["content"]) for message in line["prompt"]) <= 100
    assert line["content_truncated"] is True
    # The newest turns are kept whole, in order: what this request added.
    assert line["prompt"][-2:] == turns[-2:]
    tail = turns[-len(line["prompt"]) :]
    assert line["prompt"][1:] == tail[1:]
    # The oldest message kept is cut to what was left of the cap.
    assert tail[0]["content"].startswith(line["prompt"][0]["content"])


def test_the_merged_worker_page_keeps_configured_models_too(config: GatewayConfig) -> None:
    """`serve --workers N`: the supervisor folds the merged values once more; a configured
    model keeps its name there as in each worker."""
    worker = GatewayMetrics(max_label_values=100)
    for index in range(10):
        worker.count_tokens(identity=("k", "u", "g"), model=f"claude-junk-{index}",
                            provider="mock-anthropic", prompt=1, completion=0)  # fmt: skip
    worker.count_tokens(identity=("team1", "alice", "engineering"), model="gpt-4o-mini",
                        provider="mock", prompt=3, completion=2)  # fmt: skip
    page = CollectorRegistry(auto_describe=False)
    page.register(_BoundedCollector(worker.registry, 5, config))
    text = generate_latest(page).decode()
    tokens = {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tokens_consumed_total"
    }
    by_model: dict[str, float] = {}
    for labels, value in tokens.items():
        model = dict(labels)["model"]
        by_model[model] = by_model.get(model, 0.0) + value
    assert by_model["gpt-4o-mini"] == 5
    assert by_model["other"] == 10 - 5


# --- translated answers are captured as the client saw them (held on the old code too) -----


async def test_an_anthropic_stream_translated_for_an_openai_client_is_logged_as_sent(
    config: GatewayConfig, services: Services
) -> None:
    processor = logging_content(config, services)
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],'
        b'"stop_reason":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Bonjour "}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\xc3\xa0 vous"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":3}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    # The multi-byte "à" is split between two body chunks.
    cut = events.index(b"\xa0")
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "stream": True,
            "messages": [{"role": "user", "content": "Salut"}],
        }
    )
    answers = await play_sse(
        processor, "/anthropic/v1/chat/completions", AUTH, body, [events[:cut], events[cut:]]
    )
    sent = b"".join(
        answer.response_body.response.body_mutation.body
        for answer in answers
        if answer.HasField("response_body")
    )
    # The client got OpenAI chunks; the log has their text, the "à" whole.
    assert b"chat.completion.chunk" in sent
    [line] = lines(services)
    assert line["completion"] == "Bonjour \u00e0 vous"
    assert line["prompt"] == [{"role": "user", "content": "Salut"}]


# --- masked text is logged masked (held on the old code too) ------------------------------

GUARDS = {
    "policies": [
        {
            "name": "pii",
            "request": [
                {"name": "card-talk", "patterns": ["forbidden topic"]},
                {"name": "pii-in", "builtins": ["CREDIT_CARD", "EMAIL"], "action": "mask"},
            ],
            "response": [{"name": "pii-out", "builtins": ["CREDIT_CARD"], "action": "mask"}],
        }
    ]
}
CARD = "4111 1111 1111 1111"


def ask(text: str) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})


async def test_content_logging_shows_masked_text_and_no_refused_text() -> None:
    config = with_telemetry(
        config_with(GUARDS, {"openai-chat": {"guardrails": "pii"}}), log={"include_content": True}
    )
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    processor = processor_for(config, services)
    answer = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": f"Your card {CARD} is noted."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        }
    )  # fmt: skip
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(ask(f"Card {CARD}, mail jane@example.com")),
            response_headers(),
            response_body(answer),
        ],
    )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(ask(f"A forbidden topic: {CARD}")),
        ],
    )
    masked, refused = lines(services)
    written = orjson.dumps(lines(services)).decode()
    assert CARD not in written and "jane@example.com" not in written
    assert "Card" in masked["prompt"][0]["content"]
    assert masked["completion"].startswith("Your card ") and masked["completion"] != ""
    assert refused["http_status_code"] == 403 and "prompt" not in refused
