"""OpenAI's text-to-speech (``POST /v1/audio/speech``: JSON text in, audio out) is routed,
held to the quotas and billed per character of its input (tts-1, tts-1-hd).

Before, the audio prefix routes refused it with a 400 ``unsupported_endpoint``. Played
through the real processor (real ext_proc messages) on the default config
(config/gateway.yaml).
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from openai import AsyncOpenAI

from extproc import headers
from extproc.config import GatewayConfig, parse_config
from extproc.context import RequestContext
from extproc.mock_llm.speech_api import spoken
from extproc.model_groups import Balancer
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.quota import estimated_usd_micros
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    run_stream_reset,
)
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review_streams import OPENAI_KEY, sample
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate
from tests.unit.test_quota_estimate_guarded_parts import reserved
from tests.unit.test_quota_review import gateway

SPEECH = "/v1/audio/speech"
MP3 = {"content-type": "audio/mpeg"}
TEXT = "The quick brown fox jumped over the lazy dog."  # 45 characters
AUDIO = b"ID3\x04\x00\x00" + bytes(range(256)) * 8
# The default config's prices, USD per million characters.
TTS_1, TTS_1_HD = Decimal("15.00"), Decimal("30.00")


def speech(**fields: Any) -> bytes:
    """A body as ``client.audio.speech.create`` sends it."""
    return orjson.dumps({"model": "tts-1", "input": TEXT, "voice": "alloy", **fields})


async def send(
    processor: Processor, body: bytes, chunks: tuple[bytes, ...] = (AUDIO,), path: str = SPEECH
) -> list[ext.ProcessingResponse]:
    """The request, then the provider's audio in ``chunks``, the last one ending it."""
    messages = [request_headers(path, headers=OPENAI_KEY), request_body(body)]
    if chunks:
        messages.append(response_headers(200, MP3))
        messages += [
            response_body(chunk, end_of_stream=index == len(chunks) - 1)
            for index, chunk in enumerate(chunks)
        ]
    return await run_stream(processor, messages)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (SPEECH, "openai-audio-speech"),
        ("/openai/v1/audio/speech", "openai-prefix-audio-speech"),
        ("/openai/audio/speech", "openai-bare-prefix-audio-speech"),
    ],
)
async def test_tts_1_is_served_and_billed_per_character_of_its_input(
    processor: Processor, services: Services, path: str, route: str
) -> None:
    answers = await send(processor, speech(), path=path)
    mutation = answers[1].request_body.response.header_mutation
    mutated = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    assert mutated.get(":path", SPEECH) == SPEECH
    # The audio reaches the client as it came.
    assert not answers[3].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["route"], line["model"], line["http_status_code"]) == (route, "tts-1", 200)
    # 45 characters: 45 prompt tokens, nothing generated that is billed apart.
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (45, 0, 45)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert cost(line) == 45 * TTS_1 / 10**6
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 45
    assert sample(services, "tokens_consumed_total", token_type="completion") == 0


async def test_tts_1_hd_costs_its_own_price_per_character(
    processor: Processor, services: Services
) -> None:
    text = "Grüße aus Köln! 🎧"  # 17 characters, more UTF-8 bytes
    await send(processor, speech(model="tts-1-hd", input=text, response_format="wav"))
    line = only_line(services)
    assert line["prompt_tokens"] == 17
    assert cost(line) == 17 * TTS_1_HD / 10**6


async def test_audio_in_many_chunks_is_billed_once_at_its_end(
    processor: Processor, services: Services
) -> None:
    answers = await send(processor, speech(), chunks=(AUDIO[:100], AUDIO[100:900], AUDIO[900:]))
    assert all(not a.response_body.response.HasField("body_mutation") for a in answers[3:])
    line = only_line(services)
    assert line["prompt_tokens"] == 45 and line["usage_reported"] is True
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 45


async def test_audio_cut_before_its_end_is_charged_the_characters_as_an_estimate(
    processor: Processor, services: Services
) -> None:
    messages = [
        request_headers(SPEECH, headers=OPENAI_KEY),
        request_body(speech()),
        response_headers(200, MP3),
        response_body(AUDIO[:100], end_of_stream=False),
    ]
    await run_stream_reset(processor, messages)
    line = only_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 0)
    assert cost(line) == 45 * TTS_1 / 10**6
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 45


async def test_an_error_answer_is_charged_nothing(processor: Processor, services: Services) -> None:
    error = orjson.dumps({"error": {"message": "slow down", "type": "rate_limit_exceeded"}})
    messages = [
        request_headers(SPEECH, headers=OPENAI_KEY),
        request_body(speech()),
        response_headers(429, {"content-type": "application/json"}),
        response_body(error),
    ]
    await run_stream(processor, messages)
    line = only_line(services)
    # The provider's refusal, passed on: the request had reached it.
    assert (line["http_status_code"], line["upstream_status_code"]) == (429, 429)
    assert line["prompt_tokens"] == 0 and cost(line) == 0


# --- refused before the quota and the provider --------------------------------------------


async def refused(processor: Processor, body: bytes, path: str = SPEECH) -> tuple[int, Any]:
    answers = await send(processor, body, chunks=(), path=path)
    status, answer = immediate(answers[-1])
    return status, answer["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (orjson.dumps({"model": "tts-1", "voice": "alloy"}), "input"),
        (speech(input=""), "input"),
        (speech(input=["not", "text"]), "input"),
        (speech(input="x" * 4097), "input"),
        (speech(response_format="ogg"), "response_format"),
        (speech(stream_format="chunks"), "stream_format"),
        (speech(stream_format="sse"), "stream_format"),  # tts-1 streams no events
        (speech(stream=True), "stream"),
        (speech(speed="fast"), "speed"),
        (speech(speed=4.5), "speed"),
        (speech(speed=0.1), "speed"),
        (orjson.dumps({"input": TEXT, "voice": "alloy"}), "model"),
    ],
)
async def test_a_bad_body_is_a_400_naming_its_field(
    processor: Processor, body: bytes, param: str
) -> None:
    status, error = await refused(processor, body)
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")


async def test_4096_characters_are_taken(processor: Processor, services: Services) -> None:
    await send(processor, speech(input="x" * 4096))
    assert only_line(services)["prompt_tokens"] == 4096


async def test_a_body_that_is_no_json_is_a_400(processor: Processor) -> None:
    status, error = await refused(processor, b"model=tts-1&input=hello")
    assert status == 400 and error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


async def test_an_unknown_model_is_a_404(processor: Processor) -> None:
    status, error = await refused(processor, speech(model="tts-9"))
    assert (status, error["code"]) == (404, "model_not_found")


async def test_a_transcription_model_is_a_400_naming_where_it_is_served(
    processor: Processor,
) -> None:
    status, error = await refused(processor, speech(model="whisper-1"))
    assert (status, error["code"]) == (400, "unsupported_model_for_route")
    assert "/v1/audio/transcriptions" in error["message"]


async def test_a_speech_model_sent_to_transcriptions_is_a_400_naming_speech(
    processor: Processor,
) -> None:
    request = httpx.Request(
        "POST",
        "http://gateway/v1/audio/transcriptions",
        data={"model": "tts-1"},
        files=[("file", ("meeting.wav", AUDIO, "audio/wav"))],
    )
    sent = {**OPENAI_KEY, "content-type": request.headers["content-type"]}
    messages = [
        request_headers("/v1/audio/transcriptions", headers=sent),
        request_body(request.read()),
    ]
    status, answer = immediate((await run_stream(processor, messages))[-1])
    assert (status, answer["error"]["code"]) == (400, "unsupported_model_for_route")
    assert "/v1/audio/speech" in answer["error"]["message"]


async def test_another_audio_path_is_a_404_naming_speech(processor: Processor) -> None:
    answers = await run_stream(processor, [request_headers("/v1/audio/voices", headers=OPENAI_KEY)])
    status, answer = immediate(answers[-1])
    assert (status, answer["error"]["code"]) == (404, "route_not_found")
    assert "/v1/audio/speech" in answer["error"]["message"]


# --- quota ----------------------------------------------------------------------------------

MINUTE_LIMIT = """
quotas:
  rules:
    - {name: minute, subject: api_key, match: team1, tokens_per_minute: %d, hard_cap: %s}
"""


async def test_a_token_limit_reserves_the_characters(quota_store: QuotaStore) -> None:
    quotas = MINUTE_LIMIT % (1000, "false")
    processor, _ = gateway(quota_store, quotas)
    answers = await run_stream(
        processor, [request_headers(SPEECH, headers=OPENAI_KEY), request_body(speech())]
    )
    assert answers[-1].WhichOneof("response") == "request_body"
    assert await reserved(quota_store, quotas) == 45


async def test_a_hard_capped_limit_refuses_more_characters_than_it_has_left(
    quota_store: QuotaStore,
) -> None:
    processor, _ = gateway(quota_store, MINUTE_LIMIT % (40, "true"))
    answers = await run_stream(
        processor, [request_headers(SPEECH, headers=OPENAI_KEY), request_body(speech())]
    )
    status, _ = immediate(answers[-1])
    assert status == 429


async def test_a_bad_body_is_refused_before_the_quota_counts_it(quota_store: QuotaStore) -> None:
    quotas = MINUTE_LIMIT % (1000, "false")
    processor, _ = gateway(quota_store, quotas)
    body = speech(input="x" * 4097)
    answers = await run_stream(
        processor, [request_headers(SPEECH, headers=OPENAI_KEY), request_body(body)]
    )
    status, answer = immediate(answers[-1])
    assert (status, answer["error"]["param"]) == (400, "input")
    assert await reserved(quota_store, quotas) == 0


# --- gpt-4o-mini-tts: billed by the tokens of its done event ---------------------------------

MINI = "gpt-4o-mini-tts"
SSE = {"content-type": "text/event-stream"}
MINI_USAGE = {"input_tokens": 14, "output_tokens": 320, "total_tokens": 334}
# Its prices in the default config, USD per million tokens: text in, audio out.
MINI_IN, MINI_OUT = Decimal("0.60"), Decimal("12.00")


def events(audio: bytes, usage: dict[str, int] | None = MINI_USAGE) -> bytes:
    """OpenAI's event stream of ``audio``: two deltas, then the done event."""
    deltas = [audio[:700], audio[700:]]
    sent = [{"type": "speech.audio.delta", "audio": base64.b64encode(d).decode()} for d in deltas]
    done: dict[str, Any] = {"type": "speech.audio.done"}
    if usage is not None:
        done["usage"] = usage
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in [*sent, done])


async def send_events(
    processor: Processor, body: bytes, chunks: tuple[bytes, ...]
) -> list[ext.ProcessingResponse]:
    messages = [
        request_headers(SPEECH, headers=OPENAI_KEY),
        request_body(body),
        response_headers(200, SSE),
    ]
    messages += [
        response_body(chunk, end_of_stream=index == len(chunks) - 1)
        for index, chunk in enumerate(chunks)
    ]
    return await run_stream(processor, messages)


def sent_upstream(answers: list[ext.ProcessingResponse]) -> dict[str, Any] | None:
    mutation = answers[1].request_body.response
    if not mutation.HasField("body_mutation"):
        return None
    found: dict[str, Any] = orjson.loads(mutation.body_mutation.body)
    return found


async def test_raw_audio_of_gpt_4o_mini_tts_is_asked_as_events_and_decoded_for_the_client(
    processor: Processor, services: Services
) -> None:
    stream = events(AUDIO)
    # Envoy cuts the stream anywhere: inside an event's base64 too.
    answers = await send_events(
        processor, speech(model=MINI, instructions="Cheerful."), (stream[:500], stream[500:])
    )
    upstream = sent_upstream(answers)
    assert upstream is not None and upstream["stream_format"] == "sse"
    assert upstream["instructions"] == "Cheerful." and upstream["input"] == TEXT
    changed = {
        h.header.key: h.header.raw_value.decode()
        for h in answers[2].response_headers.response.header_mutation.set_headers
    }
    assert changed["content-type"] == "audio/mpeg"
    got = b"".join(a.response_body.response.body_mutation.body for a in answers[3:])
    assert got == AUDIO
    line = only_line(services)
    assert (line["model"], line["prompt_tokens"], line["completion_tokens"]) == (MINI, 14, 320)
    assert line["usage_reported"] is True
    assert line["completion_audio_tokens"] == 320  # its output is audio
    assert cost(line) == (14 * MINI_IN + 320 * MINI_OUT) / 10**6
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 14
    assert sample(services, "tokens_consumed_total", token_type="completion") == 320


async def test_events_asked_by_the_client_pass_as_they_came(
    processor: Processor, services: Services
) -> None:
    answers = await send_events(
        processor, speech(model=MINI, stream_format="sse"), (events(AUDIO),)
    )
    # Sent as it came (the model's name is the provider's own).
    assert sent_upstream(answers) is None
    assert not answers[3].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (14, 320)
    assert cost(line) == (14 * MINI_IN + 320 * MINI_OUT) / 10**6


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_events_cut_before_the_done_event_are_charged_the_estimate(
    processor: Processor, services: Services, stream_format: str
) -> None:
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    messages = [
        request_headers(SPEECH, headers=OPENAI_KEY),
        request_body(speech(model=MINI, stream_format=stream_format)),
        response_headers(200, SSE),
        response_body(first, end_of_stream=False),
    ]
    await run_stream_reset(processor, messages)
    line = only_line(services)
    assert line["usage_estimated"] is True
    # The characters as prompt tokens, and the audio the quota reserved: two a character.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)
    assert cost(line) == (45 * MINI_IN + 90 * MINI_OUT) / 10**6
    assert sample(services, "tokens_consumed_total", token_type="completion") == 90


async def test_a_done_event_without_usage_is_charged_the_estimate(
    processor: Processor, services: Services
) -> None:
    await send_events(processor, speech(model=MINI), (events(AUDIO, usage=None),))
    line = only_line(services)
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)


ERROR_EVENT = (
    b"data: "
    + orjson.dumps({"type": "error", "error": {"type": "server_error", "message": "overloaded"}})
    + b"\n\n"
)


async def test_an_error_event_before_any_audio_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    await send_events(processor, speech(model=MINI), (ERROR_EVENT,))
    line = only_line(services)
    assert line["prompt_tokens"] == 0 and cost(line) == 0
    assert "overloaded" in line["error_message"]


async def test_an_error_event_after_some_audio_is_charged_the_estimate(
    processor: Processor, services: Services
) -> None:
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    answers = await send_events(processor, speech(model=MINI), (first, ERROR_EVENT))
    # The raw-audio client got the audio that came before the failure.
    got = b"".join(a.response_body.response.body_mutation.body for a in answers[3:])
    assert got == AUDIO[:700]
    line = only_line(services)
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)


# A raw-audio client has had its 200 when the provider's events fail: its response must
# end abnormally (Envoy resets it on the gateway's immediate answer, the response headers
# having left), never as a clean, short audio file its SDK would save as if whole.


def client_response_reset(answers: list[ext.ProcessingResponse]) -> bool:
    return answers[-1].WhichOneof("response") == "immediate_response"


def failed_with(answers: list[ext.ProcessingResponse]) -> tuple[int, dict[str, Any]]:
    """The status and error the immediate answer fails the response with (Envoy sends
    them when it still holds the response's headers, else resets the stream)."""
    immediate = answers[-1].immediate_response
    return immediate.status.code, orjson.loads(immediate.body)["error"]


async def test_an_error_event_before_any_audio_fails_the_raw_audio_clients_response(
    processor: Processor, services: Services
) -> None:
    answers = await send_events(processor, speech(model=MINI), (ERROR_EVENT,))
    assert client_response_reset(answers)
    status, error = failed_with(answers)
    assert (status, error["message"], error["type"]) == (502, "overloaded", "server_error")
    line = only_line(services)
    assert line["prompt_tokens"] == 0 and cost(line) == 0
    assert "overloaded" in line["error_message"]
    assert sample(services, "aigw_requests_total", status_code="stream_error") == 1


async def test_an_error_event_after_some_audio_fails_the_raw_audio_clients_response(
    processor: Processor, services: Services
) -> None:
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    answers = await send_events(processor, speech(model=MINI), (first, ERROR_EVENT))
    assert answers[3].response_body.response.body_mutation.body == AUDIO[:700]
    assert client_response_reset(answers)
    line = only_line(services)
    assert line["usage_estimated"] is True and "overloaded" in line["error_message"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)


async def test_a_raw_audio_response_failed_mid_stream_logs_the_providers_share_of_the_wait(
    processor: Processor, services: Services
) -> None:
    """The provider's error event came before its body's end: the gateway fails the
    client's response there and reads no more of the provider's. The log line still says
    how long the provider took (an SSE client's line for the same failure does), not
    null as for a response that never ended."""
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    answers = await send_events(processor, speech(model=MINI), (first, ERROR_EVENT, b""))
    assert client_response_reset(answers)
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert line["upstream_latency_ms"] is not None


async def test_audio_that_is_not_base64_is_charged_the_usage_its_done_event_reports(
    processor: Processor, services: Services
) -> None:
    """A delta whose audio is not base64 breaks the client's audio; the provider still
    made the whole answer, and bills what its done event reports."""
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    broken = b'data: {"type": "speech.audio.delta", "audio": "not base64!"}\n\n'
    answers = await send_events(
        processor, speech(model=MINI), (first, broken, stream[len(first) :])
    )
    # No hole in the audio: nothing after the broken delta reaches the client, and its
    # response fails once the provider's done event was read.
    assert answers[3].response_body.response.body_mutation.body == AUDIO[:700]
    assert answers[4].WhichOneof("response") == "response_body"
    assert answers[4].response_body.response.body_mutation.body == b""
    assert client_response_reset(answers)
    assert len(answers) == 6
    assert failed_with(answers)[1]["code"] == "invalid_upstream_response"
    line = only_line(services)
    assert line["error_code"] == "invalid_upstream_response"
    assert "base64" in line["error_message"]
    # The provider's count, not the estimate (45 and 90).
    assert line["usage_estimated"] is False and line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (14, 320)
    assert line["completion_audio_tokens"] == 320
    assert cost(line) == (14 * MINI_IN + 320 * MINI_OUT) / 10**6
    assert sample(services, "tokens_consumed_total", token_type="completion") == 320
    assert sample(services, "aigw_upstream_errors_total", status_code="stream_error") == 1


async def test_audio_that_is_not_base64_in_a_stream_ended_before_its_done_event_is_estimated(
    processor: Processor, services: Services
) -> None:
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    broken = b'data: {"type": "speech.audio.delta", "audio": "not base64!"}\n\n'
    answers = await send_events(processor, speech(model=MINI), (first, broken, b""))
    assert client_response_reset(answers)
    line = only_line(services)
    assert "base64" in line["error_message"]
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)


async def test_events_ended_before_the_done_event_fail_the_raw_audio_clients_response(
    processor: Processor, services: Services
) -> None:
    """The provider's body ended cleanly after a delta, without its done event (a proxy
    ending a cut stream as if whole)."""
    stream = events(AUDIO)
    first = stream[: stream.index(b"\n\n") + 2]
    answers = await send_events(processor, speech(model=MINI), (first, b""))
    assert client_response_reset(answers)
    line = only_line(services)
    assert line["error_code"] == "invalid_upstream_response"
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (45, 90)


async def test_a_bodiless_event_stream_answer_is_a_502_to_the_raw_audio_client_charged_nothing(
    processor: Processor, services: Services
) -> None:
    """The provider's 200 event stream came without a body (its headers ended the answer,
    as a proxy may send): no audio was made. The raw-audio client gets the gateway's 502
    (Envoy holds the headers: the gateway answers them), and the log line says that 502,
    charged nothing, as an empty success answer on a route the gateway translates is."""
    answers = await run_stream(
        processor,
        [
            request_headers(SPEECH, headers=OPENAI_KEY),
            request_body(speech(model=MINI)),
            response_headers(200, SSE, end_of_stream=True),
        ],
    )
    status, error = failed_with(answers)
    assert (status, error["code"]) == (502, "invalid_upstream_response")
    line = only_line(services)
    assert (line["http_status_code"], line["error_code"]) == (502, "invalid_upstream_response")
    assert (line["prompt_tokens"], line["completion_tokens"], cost(line)) == (0, 0, 0)
    assert sample(services, "aigw_requests_total", status_code="502") == 1


async def test_an_empty_event_stream_is_charged_nothing_for_the_raw_audio_client(
    processor: Processor, services: Services
) -> None:
    """The provider's 200 event stream ended before any byte: no audio was made."""
    answers = await send_events(processor, speech(model=MINI), (b"",))
    assert client_response_reset(answers)
    line = only_line(services)
    assert line["error_code"] == "invalid_upstream_response"
    assert (line["prompt_tokens"], line["completion_tokens"], cost(line)) == (0, 0, 0)


async def test_an_empty_event_stream_is_a_request_in_the_usage_rollup(
    config: GatewayConfig, valkey: EmbeddedValkey
) -> None:
    """The provider was reached and answered: the hourly rollup counts the request the
    log line records, at no tokens, as it counts a chat answer's empty 200."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    usage = UsageStore(client, "speech:", retention_days=1)
    writer = UsageWriter(usage, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    try:
        await send_events(processor_for(config, services), speech(model=MINI), (b"",))
        assert await writer.flush() is True
        line = only_line(services)
        hour = datetime.fromisoformat(line["timestamp"]).replace(minute=0, second=0)
        rows = await usage.query(hour, hour + timedelta(hours=1), ("model",))
    finally:
        await client.aclose()
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(1, 0, 0)]


async def test_a_token_limit_reserves_the_audio_of_a_model_billed_by_tokens(
    quota_store: QuotaStore,
) -> None:
    quotas = MINUTE_LIMIT % (1000, "false")
    processor, _ = gateway(quota_store, quotas)
    body = speech(model=MINI, speed=0.5)
    await run_stream(processor, [request_headers(SPEECH, headers=OPENAI_KEY), request_body(body)])
    # 45 characters as prompt tokens, and two audio tokens a character at half speed.
    assert await reserved(quota_store, quotas) == 45 + 180


# --- the mock provider ------------------------------------------------------------------


async def test_the_mock_speaks_deterministic_audio_in_the_format_asked(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format="wav"
    )
    assert answer.content == spoken(
        {"voice": "alloy", "input": "Hello there.", "response_format": "wav"}
    )
    assert answer.content.startswith(b"RIFF")
    assert answer.response.headers["content-type"] == "audio/wav"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("error_after=1", ["speech.audio.delta", "error"]),
        ("end_after=2", ["speech.audio.delta", "speech.audio.delta"]),
    ],
)
async def test_the_mock_fails_a_speech_stream_on_request(
    openai_client: AsyncOpenAI, fault: str, expected: list[str]
) -> None:
    async with openai_client.audio.speech.with_streaming_response.create(
        model=MINI,
        voice="alloy",
        input="Hello there.",
        stream_format="sse",
        extra_headers={"x-mock-fault": fault},
    ) as answer:
        body = await answer.read()
    sent = [orjson.loads(line[6:]) for line in body.splitlines() if line.startswith(b"data: ")]
    assert [event["type"] for event in sent] == expected
    if fault.startswith("error_after"):
        assert sent[-1]["error"]["type"] == "server_error"


async def test_the_mock_sends_audio_that_is_not_base64_on_request(
    openai_client: AsyncOpenAI,
) -> None:
    async with openai_client.audio.speech.with_streaming_response.create(
        model=MINI,
        voice="alloy",
        input="Hello there.",
        stream_format="sse",
        extra_headers={"x-mock-fault": "garbage=1"},
    ) as answer:
        body = await answer.read()
    sent = [orjson.loads(line[6:]) for line in body.splitlines() if line.startswith(b"data: ")]
    deltas = [event for event in sent if event["type"] == "speech.audio.delta"]
    assert deltas and all(
        not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", event["audio"]) for event in deltas
    )


async def test_request_guards_read_what_is_read_aloud() -> None:
    # A route's guards: a refused topic is refused, an email masked before it is spoken,
    # and the characters billed are those the provider was sent.
    gateway = Gateway(config_with(WORKSHOP, {"openai-audio-speech": {"guardrails": "workshop"}}))
    refused = await send(gateway.processor, speech(input="My credit card is due."), chunks=())
    status, _ = immediate(refused[-1])
    assert status == 403
    spoken = "Write to bob@example.com today."
    answers = await send(gateway.processor, speech(input=spoken, instructions="Say it slowly."))
    sent_on = orjson.loads(answers[1].request_body.response.body_mutation.body)
    assert "bob@example.com" not in sent_on["input"]
    assert sent_on["instructions"] == "Say it slowly."
    line = gateway.log()
    assert line["prompt_tokens"] == len(sent_on["input"])


# --- found in review: billed by what the model is, whatever its name upstream -------------


def speech_config(**pricing: dict[str, float]) -> GatewayConfig:
    """The default config with an Azure-style deployment of gpt-4o-mini-tts (its own name
    upstream), a group of it and tts-1, and ``pricing`` over the default prices."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["models"].append(
        {"name": "gpt-4o-mini-tts@azure", "provider": "mock", "upstream_model": "my-voice"}
    )
    raw["model_groups"] = [
        {"name": "voice", "members": [{"model": "tts-1"}, {"model": "gpt-4o-mini-tts@azure"}]}
    ]
    raw["pricing"]["models"]["gpt-4o-mini-tts@azure"] = raw["pricing"]["models"][MINI]
    raw["pricing"]["models"].update(pricing)
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


async def test_a_deployment_of_its_own_name_is_billed_by_the_model_the_gateway_names() -> None:
    # The provider calls it my-voice: still gpt-4o-mini-tts, asked for its events.
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    processor = processor_for(speech_config(), services)
    answers = await send_events(processor, speech(model="gpt-4o-mini-tts@azure"), (events(AUDIO),))
    upstream = sent_upstream(answers)
    assert upstream is not None
    assert (upstream["model"], upstream["stream_format"]) == ("my-voice", "sse")
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (14, 320)
    assert cost(line) == (14 * MINI_IN + 320 * MINI_OUT) / 10**6


async def test_a_group_asked_for_events_draws_only_members_that_stream_them() -> None:
    services = Services(
        metrics=GatewayMetrics(), access_log=MemoryLog(), balancer=Balancer(draw=lambda: 0.0)
    )
    processor = processor_for(speech_config(), services)
    # The draw would pick tts-1, which streams no events: the other member serves it.
    answers = await send_events(
        processor, speech(model="voice", stream_format="sse"), (events(AUDIO),)
    )
    assert not answers[1].HasField("immediate_response")
    assert only_line(services)["group_member"] == "gpt-4o-mini-tts@azure"


async def test_an_estimate_prices_the_audio_and_the_characters_at_their_own_prices() -> None:
    # Prices that tell the parts apart: gpt-4o-mini-tts's audio only at audio output,
    # tts-1 at its per-character price only.
    mini = {"input_per_million": 0.60, "output_per_million": 0, "audio_output_per_million": 12.0}
    tts_1 = {
        "input_per_million": 0,
        "output_per_million": 0,
        "input_per_thousand_characters": 0.015,
    }
    config = speech_config(**{MINI: mini, "tts-1": tts_1})
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    processor = processor_for(config, services)
    stream = events(AUDIO)
    await run_stream_reset(
        processor,
        [
            request_headers(SPEECH, headers=OPENAI_KEY),
            request_body(speech(model=MINI)),
            response_headers(200, SSE),
            response_body(stream[: stream.index(b"\n\n") + 2], end_of_stream=False),
        ],
    )
    # A cut stream: its audio estimate (90 tokens) at the audio output price.
    line = only_line(services)
    assert (line["completion_tokens"], line["completion_audio_tokens"]) == (90, 90)
    assert cost(line) == (45 * MINI_IN + 90 * MINI_OUT) / 10**6
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    processor = processor_for(config, services)
    await run_stream_reset(
        processor,
        [
            request_headers(SPEECH, headers=OPENAI_KEY),
            request_body(speech()),
            response_headers(200, MP3),
            response_body(AUDIO[:100], end_of_stream=False),
        ],
    )
    # A cut tts-1 answer: its characters at the per-character price.
    assert cost(only_line(services)) == 45 * TTS_1 / 10**6
    # A budget reserves gpt-4o-mini-tts's audio at its price too: 45 characters at
    # $0.60 a million (27 micros) and 90 audio tokens at $12 (1,080).
    ctx = RequestContext(runtime=Runtime(config, Services(GatewayMetrics(), MemoryLog())))
    ctx.route = ctx.runtime.routes.named("openai-audio-speech")
    ctx.model, ctx.upstream_model, ctx.body = MINI, MINI, orjson.loads(speech(model=MINI))
    assert estimated_usd_micros(ctx, 45, 90) == 27 + 1_080
