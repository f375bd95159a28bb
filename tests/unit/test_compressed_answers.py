"""A provider that compresses its answer although the gateway asked for none.

Each answer is played through the real processor with real ext_proc messages; each
test checks what the client got (its body and headers) and the request's log line.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig, load_config
from extproc.headers import BODY_HINTS_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    run_stream_reset,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with, openai_chunk, openai_stream_text
from tests.unit.test_accounting_review_streams import STREAMED_APIS, sample
from tests.unit.test_response_path import first_chunk
from tests.unit.test_telemetry_review import with_telemetry

AUTH = {"authorization": "Bearer team1-key"}
UPSTREAM = {"x-envoy-upstream-service-time": "3"}
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paid with 4111 1111 1111 1111."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }
)
USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}\n\n'
)
STREAM = (
    openai_chunk("Paid with 4111 1111 ")
    + openai_chunk("1111 1111.", finish="stop")
    + USAGE_CHUNK
    + b"data: [DONE]\n\n"
)
# The default config, and one whose chat route masks card numbers in answers.
PLAIN = load_config("config/gateway.yaml", environ={})
GUARDED = config_with(
    {
        "policies": [
            {
                "name": "cards",
                "response": [{"name": "pii-out", "builtins": ["CREDIT_CARD"], "action": "mask"}],
            }
        ]
    },
    {"openai-chat": {"guardrails": "cards"}},
)


def deflated(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return compressor.compress(data) + compressor.flush()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


class Played:
    """One chat request answered with ``chunks`` (compressed as ``encoding``)."""

    def __init__(self, answers: list[ext.ProcessingResponse], chunks: list[bytes], log: MemoryLog):
        self.answers = answers
        self.chunks = chunks
        [self.line] = log.lines()

    @property
    def body(self) -> bytes:
        return client_body(self.chunks, self.answers[3:])

    @property
    def removed_headers(self) -> list[str]:
        return list(self.answers[2].response_headers.response.header_mutation.remove_headers)

    @property
    def usage(self) -> tuple[Any, ...]:
        line = self.line
        return (
            line["prompt_tokens"],
            line["completion_tokens"],
            line["usage_reported"],
            line["usage_estimated"],
        )


async def play(
    chunks: list[bytes],
    encoding: str,
    *,
    stream: bool = False,
    config: GatewayConfig = PLAIN,
) -> Played:
    log = MemoryLog()
    processor = processor_for(config, Services(GatewayMetrics(), log))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Pay"}]}
    if stream:
        body["stream"] = True
    content_type = "text/event-stream" if stream else "application/json"
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(
                200, {"content-type": content_type, "content-encoding": encoding, **UPSTREAM}
            ),
            *(response_body(chunk, end_of_stream=n == len(chunks) - 1) for n, chunk in
              enumerate(chunks)),
        ],
    )  # fmt: skip
    return Played(answers, chunks, log)


@pytest.mark.parametrize(
    ("encoding", "compressed"),
    [
        ("gzip", gzip.compress(ANSWER)),
        ("x-gzip", gzip.compress(ANSWER)),
        ("deflate", deflated(ANSWER, 15)),  # zlib's format, as the standard says
        ("deflate", deflated(ANSWER, -15)),  # the raw format some servers send
        ("GZip ", gzip.compress(ANSWER)),
    ],
)
async def test_a_compressed_answer_is_billed_its_usage_and_reaches_the_client_uncompressed(
    encoding: str, compressed: bytes
) -> None:
    played = await play(pieces(compressed, 40), encoding)
    assert played.usage == (9, 12, True, False)
    assert orjson.loads(played.body) == orjson.loads(ANSWER)
    assert {"content-encoding", "content-length"} <= set(played.removed_headers)


@pytest.mark.parametrize("size", [1, 7, 4096])
@pytest.mark.parametrize("wbits", [31, 15, -15])
async def test_a_compressed_stream_is_billed_its_usage_however_it_is_cut(
    size: int, wbits: int
) -> None:
    encoding = "gzip" if wbits == 31 else "deflate"
    played = await play(pieces(deflated(STREAM, wbits), size), encoding, stream=True)
    assert played.usage == (9, 12, True, False)
    assert played.line["outcome"] == "completed"
    # The client did not ask for the usage chunk: it is hidden, as from any stream.
    text = played.body
    assert openai_stream_text(text) == "Paid with 4111 1111 1111 1111."
    assert b'"usage"' not in text and text.endswith(b"data: [DONE]\n\n")
    assert "content-encoding" in played.removed_headers


async def test_a_compressed_answer_on_a_guarded_route_is_masked() -> None:
    played = await play([gzip.compress(ANSWER)], "gzip", config=GUARDED)
    content = orjson.loads(played.body)["choices"][0]["message"]["content"]
    assert "4111" not in content and content.startswith("Paid with ")
    assert played.usage == (9, 12, True, False)


async def test_a_compressed_stream_on_a_guarded_route_is_masked() -> None:
    played = await play(pieces(gzip.compress(STREAM), 16), "gzip", stream=True, config=GUARDED)
    text = openai_stream_text(played.body)
    assert "4111" not in text and text.startswith("Paid with ")
    assert played.usage == (9, 12, True, False)


async def test_a_broken_compressed_answer_is_a_502_as_an_answer_that_could_not_be_translated() -> (
    None
):
    broken = gzip.compress(ANSWER)[:-30] + b"\x00" * 30
    played = await play([broken], "gzip")
    refused = played.answers[3].response_body.response
    statuses = [h.header.raw_value for h in refused.header_mutation.set_headers
                if h.header.key == ":status"]  # fmt: skip
    assert statuses == [b"502"]
    error = orjson.loads(refused.body_mutation.body)["error"]
    assert "compressed answer could not be read" in error["message"]
    # As an answer the gateway could not translate: an error the client got, not charged.
    line = played.line
    assert (line["http_status_code"], line["upstream_status_code"]) == (502, 200)
    assert (line["outcome"], line["prompt_tokens"]) == ("upstream_error", 0)


async def test_a_stream_that_breaks_ends_there_and_is_charged_as_a_cut_stream() -> None:
    compressed = gzip.compress(STREAM)
    half = len(compressed) // 2
    played = await play([compressed[:half], b"\xff" * 64, compressed[half:]], "gzip", stream=True)
    assert b"\xff" not in played.body and b"\x1f\x8b" not in played.body
    assert played.line["usage_estimated"] is True and played.line["prompt_tokens"] > 0


async def test_an_answer_in_an_encoding_the_gateway_cannot_read_passes_as_it_came() -> None:
    opaque = b"\x8b\x05\x80" + ANSWER[:20]  # brotli, as far as the gateway knows
    played = await play([opaque], "br")
    assert played.body == opaque
    assert "content-encoding" not in played.removed_headers


async def test_an_answer_that_inflates_past_the_largest_is_billed_as_one_over_the_buffer() -> None:
    limit = PLAIN.envoy.max_response_body_bytes
    bomb = gzip.compress(b" " * (limit + 1))
    played = await play(pieces(bomb, 4096), "gzip")
    refused = played.answers[-1].response_body.response
    error = orjson.loads(refused.body_mutation.body)["error"]
    # As Envoy's reply to an answer over its buffer: the provider billed it whole.
    assert (error["code"], error["message"]) == (
        "response_too_large",
        "the provider's answer is larger than the gateway can buffer",
    )
    line = played.line
    assert (line["http_status_code"], line["error_code"]) == (502, "response_too_large")
    assert line["usage_estimated"] is True and line["prompt_tokens"] > 0
    # The completion allowance the quota reserved (the default config's default_max_tokens).
    assert line["completion_tokens"] == PLAIN.quotas.default_max_tokens


def members(data: bytes, size: int) -> bytes:
    """``data`` as a gzip body of one member per ``size`` bytes (RFC 1952)."""
    return b"".join(gzip.compress(part) for part in pieces(data, size))


@pytest.mark.parametrize("member_size", [30, len(ANSWER) - 1])
async def test_a_gzip_answer_of_several_members_is_read_whole(member_size: int) -> None:
    played = await play(pieces(members(ANSWER, member_size), 64), "gzip")
    assert played.usage == (9, 12, True, False)
    assert orjson.loads(played.body) == orjson.loads(ANSWER)


@pytest.mark.parametrize("size", [1, 2, 9, 4096])
async def test_a_gzip_stream_of_one_member_per_event_is_billed_its_usage(size: int) -> None:
    events = [event + b"\n\n" for event in STREAM.split(b"\n\n") if event]
    compressed = b"".join(gzip.compress(event) for event in events)
    played = await play(pieces(compressed, size), "gzip", stream=True)
    assert played.usage == (9, 12, True, False)
    assert played.line["outcome"] == "completed"
    assert openai_stream_text(played.body) == "Paid with 4111 1111 1111 1111."
    assert played.body.endswith(b"data: [DONE]\n\n")


async def test_bytes_after_the_last_gzip_member_are_ignored_as_clients_ignore_them() -> None:
    played = await play([gzip.compress(ANSWER) + b"\x00" * 8], "gzip")
    assert played.usage == (9, 12, True, False)
    streamed = await play([gzip.compress(STREAM) + b"\x00" * 8], "gzip", stream=True)
    assert streamed.usage == (9, 12, True, False)
    assert openai_stream_text(streamed.body) == "Paid with 4111 1111 1111 1111."


# --- the lean path: no response headers message, the encoding told by the first bytes ---


async def play_lean(
    chunks: list[bytes], status: int = 200, *, stream: bool = False, config: GatewayConfig = PLAIN
) -> Played:
    log = MemoryLog()
    processor = processor_for(config, Services(GatewayMetrics(), log))
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "P"}]}
    if stream:
        body["stream"] = True
    first, *rest = chunks
    opening = first_chunk(first, status)
    opening.response_body.end_of_stream = not rest
    answers = await run_stream(
        processor,
        [
            request_headers("/openai/gpt-4o-mini", headers=AUTH),
            request_body(orjson.dumps(body)),
            opening,
            *(response_body(chunk, end_of_stream=n == len(rest) - 1) for n, chunk in
              enumerate(rest)),
        ],
    )  # fmt: skip
    # No response headers message: the answers after the request's are the body's.
    return Played([*answers[:2], ext.ProcessingResponse(), *answers[2:]], chunks, log)


async def test_a_compressed_answer_on_the_lean_path_is_billed_and_goes_as_it_came() -> None:
    compressed = gzip.compress(ANSWER)
    played = await play_lean(pieces(compressed, 50))
    assert played.usage == (9, 12, True, False)
    # The client was told gzip (the headers have left): it gets the provider's bytes.
    assert gzip.decompress(played.body) == ANSWER


async def test_a_compressed_stream_on_the_lean_path_is_compressed_again_for_its_client() -> None:
    played = await play_lean(pieces(deflated(STREAM, 15), 9), stream=True)
    assert played.usage == (9, 12, True, False)
    text = zlib.decompress(played.body)
    assert openai_stream_text(text) == "Paid with 4111 1111 1111 1111."
    assert b'"usage"' not in text and text.endswith(b"data: [DONE]\n\n")


async def test_a_compressed_error_quoting_the_provider_key_on_the_lean_path_is_scrubbed() -> None:
    quoted = orjson.dumps(
        {"error": {"message": "key mock-provider-key is over quota", "type": "insufficient_quota"}}
    )
    played = await play_lean([gzip.compress(quoted)], 429)
    shown = gzip.decompress(played.body)
    assert b"mock-provider-key" not in shown
    assert orjson.loads(shown)["error"]["type"] == "insufficient_quota"
    assert played.line["http_status_code"] == 429


async def test_a_gzip_answer_of_several_members_on_the_lean_path_is_billed() -> None:
    compressed = members(ANSWER, 40)
    played = await play_lean(pieces(compressed, 50))
    assert played.usage == (9, 12, True, False)
    assert gzip.decompress(played.body) == ANSWER


async def test_a_compressed_answer_too_large_on_the_lean_path_is_billed_as_over_the_buffer() -> (
    None
):
    limit = PLAIN.envoy.max_response_body_bytes
    played = await play_lean(pieces(gzip.compress(b" " * (limit + 1)), 4096))
    line = played.line
    # Its 200 has left: it goes as it came, charged as an answer over the buffer.
    assert line["http_status_code"] == 200
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == PLAIN.quotas.default_max_tokens


# --- a client that stops reading at the stream's end, on the lean path -------------------

ANTHROPIC_KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
CLAUDE_STREAM = b"".join(
    b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"
    for kind, fields in [
        ("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
         "model": "claude-3-5-haiku-latest", "content": [], "usage": {"input_tokens": 9,
         "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Paid"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}}),
        ("message_stop", {}),
    ]
)  # fmt: skip
# Each API's route, key, request fields, stream, and where its answer's end begins (its
# last count, then its end marker).
LEAN_STREAMS = {
    "chat": ("/openai/gpt-4o-mini", AUTH, {"model": "gpt-4o-mini"}, STREAM, USAGE_CHUNK),
    "messages": (
        "/v1/messages",
        ANTHROPIC_KEY,
        {"model": "claude-3-5-haiku-latest", "max_tokens": 64},
        CLAUDE_STREAM,
        b"event: message_delta",
    ),
}


def flushed(data: bytes) -> bytes:
    """``data`` gzipped and flushed, without the gzip trailer: what reached the gateway
    when the client, which read all of ``data``, hung up before the body's last bytes."""
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


async def reset_on_the_lean_path(api: str, sent: bytes) -> tuple[dict[str, Any], Services]:
    """A lean-path stream of ``api`` whose provider gzipped ``sent``, in 40-byte chunks;
    Envoy resets the ext_proc stream after the last, before any end of stream. The
    request's log line and its services."""
    path, key, fields, _, _ = LEAN_STREAMS[api]
    services = Services(GatewayMetrics(), MemoryLog())
    processor = processor_for(PLAIN, services)
    body = {**fields, "stream": True, "messages": [{"role": "user", "content": "Pay"}]}
    first, *rest = pieces(flushed(sent), 40)
    opening = request_headers(path, headers=key)
    opening.metadata_context.filter_metadata[BODY_HINTS_NAMESPACE].update(
        {"model": fields["model"], "stream": True}
    )
    await run_stream_reset(
        processor,
        [
            opening,
            request_body(orjson.dumps(body)),
            first_chunk(first, 200),
            *(response_body(chunk, end_of_stream=False) for chunk in rest),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line, services


@pytest.mark.parametrize("api", LEAN_STREAMS)
async def test_a_compressed_stream_read_to_its_end_is_complete_when_its_client_leaves(
    api: str,
) -> None:
    # The client read the stream's end marker and hung up; Envoy reset the ext_proc stream
    # before its end of stream. The gateway had read the marker (in the bytes it decoded),
    # so the answer was whole: it was logged aborted, the marker sought in gzip bytes.
    line, services = await reset_on_the_lean_path(api, LEAN_STREAMS[api][3])
    assert line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (9, 12)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert sample(services, "aigw_requests_total", status_code="200") == 1
    assert sample(services, "aigw_requests_total", status_code="aborted") == 0


@pytest.mark.parametrize("api", LEAN_STREAMS)
async def test_a_compressed_stream_cut_before_its_end_is_still_aborted(api: str) -> None:
    whole, end = LEAN_STREAMS[api][3], LEAN_STREAMS[api][4]
    line, services = await reset_on_the_lean_path(api, whole[: whole.index(end)])
    assert line["outcome"] == "aborted"
    assert sample(services, "aigw_requests_total", status_code="aborted") == 1
    # Charged as a cut stream is: its text estimated ("Paid with 4111 1111 1111 1111.",
    # 30 characters, or "Paid"), its prompt as the quota estimates it or as Claude's
    # message_start reported it.
    assert line["usage_estimated"] is True
    expected = (4, 8) if api == "chat" else (9, 1)
    assert (line["prompt_tokens"], line["completion_tokens"]) == expected


# --- what the log line reads of a compressed answer ---------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_line_reads_a_compressed_answer_on_the_lean_path_decoded(stream: bool) -> None:
    # The client gets the gzip bytes; the finish reasons and the logged completion were
    # looked for in them, and the line had neither.
    logging = with_telemetry(PLAIN, log={"include_content": True})
    answer = gzip.compress(STREAM if stream else ANSWER)
    played = await play_lean(pieces(answer, 50), stream=stream, config=logging)
    assert played.line["finish_reasons"] == ["stop"]
    assert played.line["completion"] == "Paid with 4111 1111 1111 1111."


async def test_the_line_reads_a_compressed_invoke_stream_unwrapped() -> None:
    # InvokeModel's stream frames Claude's events base64-encoded: its finish reason is
    # read in the events the reader unwrapped, which for a gzipped stream were skipped.
    served = STREAMED_APIS["invoke"]
    compressor = zlib.compressobj(wbits=31)
    frames = [compressor.compress(frame) for frame in served.stream("whole")]
    frames.append(compressor.flush())
    log = MemoryLog()
    runtime = Runtime(PLAIN, Services(GatewayMetrics(), log))
    await runtime.start()  # the AWS credentials
    try:
        await run_stream(
            Processor(lambda: runtime, default_stages()),
            [
                request_headers(served.path, headers=served.key),
                request_body(orjson.dumps(served.body)),
                response_headers(200, {**served.headers, "content-encoding": "gzip"}),
                *(response_body(frame, end_of_stream=False) for frame in frames),
                response_body(b"", end_of_stream=True),
            ],
        )
    finally:
        await runtime.close()
    [line] = log.lines()
    assert (line["outcome"], line["finish_reasons"]) == ("completed", ["end_turn"])
