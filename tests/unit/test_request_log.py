"""The request log: what a line says, and how lines reach stdout or a rotated file.

Lines are built from real ext_proc streams played through the processor; the
writer is checked against a real file and a real pipe nobody reads.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from extproc import headers
from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.content import ContentCapture
from extproc.telemetry.log_writer import ATOMIC_WRITE_BYTES, LineWriter, RotatingFile
from extproc.telemetry.trace_context import parse_traceparent
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import anthropic_anthropic, openai_bedrock_stream, openai_openai

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
SCHEMA = Draft202012Validator(
    orjson.loads(Path("docs/log-schema.json").read_bytes()), format_checker=FormatChecker()
)
SSE = {"content-type": "text/event-stream"}


def chat(text: str = "hi", **fields: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **fields}
    return orjson.dumps(body)


def only_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    errors = [error.message for error in SCHEMA.iter_errors(line)]
    assert not errors, errors
    return line  # type: ignore[no-any-return]


def with_log(config: GatewayConfig, **log: Any) -> GatewayConfig:
    telemetry = config.telemetry.model_copy(
        update={"log": config.telemetry.log.model_copy(update=log)}
    )
    return config.model_copy(update={"telemetry": telemetry})


COMPLETION = orjson.dumps(
    {
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 3,
            "total_tokens": 1203,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    }
)


async def test_a_completed_request_logs_usage_cache_reasons_and_timings(
    processor: Processor, services: Services
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers={**AUTH, "traceparent": traceparent}),
            request_body(chat()),
            response_headers(),
            response_body(COMPLETION),
        ],
    )
    line = only_line(services)
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (line["prompt_tokens"], line["cached_tokens"], line["total_tokens"]) == (
        1200,
        1024,
        1203,
    )
    assert line["finish_reasons"] == ["stop"]
    assert line["quota_decision"] == "none"
    assert line["upstream_latency_ms"] is not None
    assert line["upstream_latency_ms"] <= line["latency_ms"]
    # Not a stream: no time to first token; and no text without include_content.
    assert line["time_to_first_token_ms"] is None
    assert "prompt" not in line and "completion" not in line
    assert b"Paris" not in orjson.dumps(line)


async def test_a_refused_key_still_gets_a_full_line(
    processor: Processor, services: Services
) -> None:
    await run_stream(
        processor, [request_headers(CHAT, headers={"authorization": "Bearer wrong-key"})]
    )
    line = only_line(services)
    assert (line["http_status_code"], line["outcome"]) == (401, "rejected")
    assert (line["error_type"], line["error_code"]) == ("authentication_error", "invalid_api_key")
    assert line["quota_decision"] is None and line["upstream_latency_ms"] is None
    assert "wrong-key" not in orjson.dumps(line).decode()


async def test_bad_json_gets_a_full_line_with_the_caller(
    processor: Processor, services: Services
) -> None:
    await run_stream(processor, [request_headers(CHAT, headers=AUTH), request_body(b"{nope")])
    line = only_line(services)
    assert (line["http_status_code"], line["error_code"]) == (400, None)
    assert line["error_type"] == "invalid_request_error"
    assert (line["api_key_id"], line["group_id"]) == ("team1", "engineering")


async def test_stream_finish_reason_split_across_chunks_and_ttft(
    processor: Processor, services: Services
) -> None:
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"He said \\"finish_reason\\": \\"x\\""},'
        b'"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}'
        b"\n\ndata: [DONE]\n\n"
    )
    cut = events.index(b'"length"') + 3
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(stream=True)),
            response_headers(200, SSE),
            response_body(events[:cut], end_of_stream=False),
            response_body(events[cut:], end_of_stream=True),
        ],
    )
    line = only_line(services)
    # The quoted text in the delta is not a reason; the one cut in two is read once.
    assert line["finish_reasons"] == ["length"]
    assert line["time_to_first_token_ms"] is not None
    assert line["time_to_first_byte_ms"] <= line["time_to_first_token_ms"]


async def test_include_content_logs_the_text_the_client_saw(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_log(config, include_content=True), services)
    events = (
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Bonjour"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":" Alice"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
        b"\n\ndata: [DONE]\n\n"
    )
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Say hello"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
            ],
        }
    )
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(body),
            response_headers(200, SSE),
            response_body(events),
        ],
    )
    line = only_line(services)
    assert line["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello\n[image_url]"},
    ]
    assert line["completion"] == "Bonjour Alice"
    assert line["content_truncated"] is False


async def test_anthropic_messages_content_and_stop_reason(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_log(config, include_content=True, max_content_chars=4), services)
    answer = orjson.dumps(
        {
            "type": "message",
            "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "Hello there"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 3, "cache_read_input_tokens": 7, "output_tokens": 2},
        }
    )
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 2,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
            request_body(body),
            response_headers(),
            response_body(answer),
        ],
    )
    line = only_line(services)
    assert line["finish_reasons"] == ["max_tokens"]
    assert (line["prompt_tokens"], line["cached_tokens"]) == (10, 7)
    assert line["prompt"] == [
        {"role": "system", "content": "Be"},  # the cap (4) bounds the whole prompt
        {"role": "user", "content": "Hi"},
    ]
    assert line["completion"] == "Hell"
    assert line["content_truncated"] is True


def test_anthropic_stream_text_is_joined() -> None:
    capture = ContentCapture(anthropic=True, max_chars=100)
    capture.add_response_chunk(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hel"}}\n\n',
        streamed=True,
    )
    capture.add_response_chunk(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"lo"}}\n\n',
        streamed=True,
    )
    assert capture.completion() == "Hello"
    assert orjson.loads(capture.output_messages_json("end_turn") or "null") == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Hello"}],
            "finish_reason": "end_turn",
        }
    ]


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_traceparent_gives_the_trace_id(header: str, trace_id: str | None) -> None:
    assert parse_traceparent(header) == trace_id


# --- sinks ------------------------------------------------------------------------


def test_file_rotates_by_size_without_splitting_a_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "requests.log"
    log = AccessLog(stdout=False, file=str(path), max_bytes=1000, backup_count=2)
    for index in range(100):
        log.write({"n": index, "pad": "x" * 80})
    log.close()
    files = sorted(tmp_path.joinpath("logs").iterdir())
    assert [f.name for f in files] == ["requests.log", "requests.log.1", "requests.log.2"]
    kept: list[int] = []
    for file in (path.with_name("requests.log.2"), path.with_name("requests.log.1"), path):
        data = file.read_bytes()
        assert len(data) <= 1000
        assert data.endswith(b"\n")
        kept.extend(orjson.loads(line)["n"] for line in data.splitlines())
    # The newest lines survive, in order; older files were dropped past backup_count.
    assert kept == list(range(100 - len(kept), 100))


def test_no_backups_means_the_file_starts_over(tmp_path: Path) -> None:
    file = RotatingFile(tmp_path / "r.log", max_bytes=10, backup_count=0)
    file.write(b"123456789\n")
    file.write(b"abc\n")
    file.close()
    assert [p.name for p in tmp_path.iterdir()] == ["r.log"]
    assert (tmp_path / "r.log").read_bytes() == b"abc\n"


def test_a_stuck_stdout_never_blocks_the_caller_and_drops_are_counted() -> None:
    read_end, write_end = os.pipe()
    stuck = os.fdopen(write_end, "wb")
    writer = LineWriter(stdout=stuck, queue_size=8)
    line = b"x" * 4000 + b"\n"
    # Far more than the pipe holds (64 KiB) plus the queue: nobody reads the pipe,
    # so the writer thread blocks in write(); submit() must keep returning.
    for _ in range(200):
        writer.submit(line)
    assert writer.dropped >= 200 - 8 - 64 * 1024 // len(line) - 2
    # Unstick the sink: every line not dropped arrives whole.
    received = bytearray()
    reader = threading.Thread(target=lambda: _drain(read_end, received))
    reader.start()
    writer.close()
    stuck.close()
    reader.join(10)
    assert received.count(b"\n") == 200 - writer.dropped
    assert all(len(part) == 4000 for part in bytes(received).split(b"\n")[:-1])


class _RecordingStdout(io.BytesIO):
    """A stdout that keeps what each flush sent: one ``write`` call to the pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def flush(self) -> None:
        if self.getvalue():
            self.sent.append(self.getvalue())
            self.seek(0)
            self.truncate()


def test_stdout_lines_go_out_whole_and_a_write_never_exceeds_what_a_pipe_keeps_whole() -> None:
    """Workers share one stdout: a write of at most PIPE_BUF bytes never interleaves
    with another process's, so every write holds whole lines and stays under it
    unless it is one long line alone."""
    stdout = _RecordingStdout()
    writer = LineWriter(stdout=stdout)
    lines = [orjson.dumps({"n": n, "pad": "p" * (n % 7 * 300)}) + b"\n" for n in range(60)]
    lines.insert(30, orjson.dumps({"n": "long", "pad": "x" * 9000}) + b"\n")
    for line in lines:
        writer.submit(line)
    writer.close()
    assert b"".join(stdout.sent) == b"".join(lines)
    for sent in stdout.sent:
        assert sent.endswith(b"\n")
        assert len(sent) <= ATOMIC_WRITE_BYTES or sent.count(b"\n") == 1
    assert writer.written == len(lines) and writer.failed == 0


def _writer_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("aigw-request")}


def _wakeups(thread: threading.Thread) -> int:
    """How many times ``thread`` has gone to sleep and woken so far (the kernel's count
    of its voluntary context switches)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def _poll(probe: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not probe() and time.monotonic() < deadline:
        time.sleep(0.01)
    return probe()


def test_an_idle_writer_sleeps_and_the_next_line_still_goes_out() -> None:
    """With no line to write, the writer thread sleeps until one comes (one that woke
    every 10 ms cost an idle gateway 2% of a core); the line that comes is written
    without a close, and a close ends a sleeping writer."""
    stdout = _RecordingStdout()
    others = _writer_threads()
    writer = LineWriter(stdout=stdout)
    (thread,) = _writer_threads() - others
    writer.submit(b'{"n": 1}\n')
    assert _poll(lambda: writer.written == 1)
    time.sleep(0.1)  # the writer finds its queue empty and falls asleep
    before = _wakeups(thread)
    time.sleep(0.5)  # 50 drain intervals
    assert _wakeups(thread) - before <= 2
    writer.submit(b'{"n": 2}\n')
    assert _poll(lambda: writer.written == 2)
    assert b"".join(stdout.sent) == b'{"n": 1}\n{"n": 2}\n'
    writer.close()
    assert not thread.is_alive()


class _FailingStdout(io.BytesIO):
    def flush(self) -> None:
        raise OSError("stdout closed")


def test_lines_a_broken_stdout_refuses_are_counted_each() -> None:
    writer = LineWriter(stdout=_FailingStdout())
    for n in range(5):
        writer.submit(b'{"n": %d}\n' % n)
    writer.close()
    assert writer.failed == 5


def _drain(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            into.extend(chunk)


def test_pid_in_the_file_name_gives_each_process_its_own_file(tmp_path: Path) -> None:
    log = AccessLog(stdout=False, file=str(tmp_path / "requests-{pid}.log"))
    log.write({"ok": True})
    log.close()
    assert (tmp_path / f"requests-{os.getpid()}.log").read_bytes() == b'{"ok":true}\n'


def test_cached_tokens_are_read_from_every_providers_usage() -> None:
    openai = openai_openai.usage_from_object(
        {
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 32},
        }
    )
    anthropic = anthropic_anthropic.usage_from_object(
        {"input_tokens": 10, "cache_read_input_tokens": 40, "output_tokens": 5}
    )
    bedrock = openai_bedrock_stream.read_usage(
        {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 40}
    )
    assert bedrock is not None
    assert [u.cached_tokens if u else None for u in (openai, anthropic, bedrock[0])] == [32, 40, 40]
    # The prompt counts what was read from the cache too.
    assert [u.prompt_tokens if u else None for u in (openai, anthropic, bedrock[0])] == [50, 50, 50]


async def test_span_metadata_goes_with_the_usage_chunk_not_only_the_empty_end(
    processor: Processor,
) -> None:
    # When the client hangs up after [DONE], Envoy drops the answer to the empty
    # end-of-stream message: the usage must already have reached Envoy.
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}'
        b"\n\ndata: [DONE]\n\n"
    )
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat(stream=True)),
            response_headers(200, SSE),
            response_body(events, end_of_stream=False),
            response_body(b"", end_of_stream=True),
        ],
    )
    namespace = answers[3].dynamic_metadata.fields[headers.METADATA_NAMESPACE].struct_value
    assert namespace.fields["prompt_tokens"].number_value == 4
    assert namespace.fields["finish_reasons"].string_value == '["stop"]'
    assert namespace.fields["api_key_id"].string_value == "team1"
