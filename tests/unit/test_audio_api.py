"""OpenAI's speech to text (``POST /v1/audio/transcriptions`` and ``/translations``, a
multipart/form-data form of an audio file) is routed, authenticated, held to quotas and
billed by its usage, whatever format the client asked for.

Before, the gateway had no route for these paths: a transcription was no AI traffic to
it, neither counted nor billed. Played through the real processor (real ext_proc
messages) on the default config (config/gateway.yaml).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import audio_api, headers
from extproc.config import GatewayConfig
from extproc.context import RequestContext
from extproc.multipart_form import read_form
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.quota import estimated_usd_micros
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    run_stream_reset,
)
from extproc.translators.openai_audio import rendered, usage_from_audio
from tests.unit.guard_helpers import config_with
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review_streams import OPENAI_KEY, SSE, sample
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
JSON = {"content-type": "application/json"}
AUDIO = b"RIFF" + bytes(range(256)) * 125  # 32,004 bytes: three seconds' estimate
TEXT = "We ship on Friday. Alice owns the release."
TOKENS = {
    "type": "tokens",
    "input_tokens": 130,
    "input_token_details": {"text_tokens": 10, "audio_tokens": 120},
    "output_tokens": 11,
    "total_tokens": 141,
}
# gpt-4o-transcribe's prices in the default config, USD per million tokens.
TEXT_IN, AUDIO_IN, OUT = Decimal("2.50"), Decimal("6.00"), Decimal("10.00")
TOKENS_COST = (10 * TEXT_IN + 120 * AUDIO_IN + 11 * OUT) / 10**6
# whisper-1's, USD per minute.
PER_MINUTE = Decimal("0.006")
SEGMENTS = [
    {"id": 0, "start": 0.0, "end": 2.5, "text": " We ship on Friday."},
    {"id": 1, "start": 2.5, "end": 61.25, "text": " Alice owns the release."},
]


def form(path: str = TRANSCRIPTIONS, **fields: str | None) -> tuple[bytes, dict[str, str]]:
    """A form as the openai SDK sends it: its body and its headers (key included)."""
    sent = {"model": "gpt-4o-transcribe", **fields}
    request = httpx.Request(
        "POST",
        f"http://gateway{path}",
        data={k: v for k, v in sent.items() if v is not None},
        files=[("file", ("meeting.wav", AUDIO, "audio/wav"))],
    )
    return request.read(), {**OPENAI_KEY, "content-type": request.headers["content-type"]}


async def send(
    processor: Processor,
    body: bytes,
    sent: dict[str, str],
    reply: bytes = b"",
    path: str = TRANSCRIPTIONS,
    answer_headers: dict[str, str] | None = None,
) -> list[ext.ProcessingResponse]:
    messages = [request_headers(path, headers=sent), request_body(body)]
    if reply:
        messages += [response_headers(200, answer_headers or JSON), response_body(reply)]
    return await run_stream(processor, messages)


def set_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        h.header.key: h.header.raw_value.decode()
        for h in answer.request_body.response.header_mutation.set_headers
    }


def upstream_fields(answers: list[ext.ProcessingResponse], sent: dict[str, str]) -> dict[str, str]:
    """The text fields of the form that went upstream (the client's, when unchanged)."""
    mutation = answers[1].request_body.response
    assert mutation.HasField("body_mutation"), "the form went as it came"
    return read_form(mutation.body_mutation.body, sent["content-type"]).fields


def client_got(answers: list[ext.ProcessingResponse]) -> tuple[bytes, dict[str, str]]:
    """The answer's body as rewritten for the client, and its header changes."""
    changed = {
        h.header.key: h.header.raw_value.decode()
        for h in answers[2].response_headers.response.header_mutation.set_headers
    }
    return answers[3].response_body.response.body_mutation.body, changed


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


# --- routes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (TRANSCRIPTIONS, "openai-audio-transcriptions"),
        ("/openai/v1/audio/transcriptions", "openai-prefix-audio-transcriptions"),
        ("/openai/audio/transcriptions", "openai-bare-prefix-audio-transcriptions"),
    ],
)
async def test_a_transcription_reaches_the_providers_endpoint_as_sent_with_its_key(
    processor: Processor, services: Services, path: str, route: str
) -> None:
    body, sent = form()
    reply = orjson.dumps({"text": TEXT, "usage": TOKENS})
    answers = await send(processor, body, sent, reply, path=path)
    mutated = set_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    assert mutated.get(":path", TRANSCRIPTIONS) == TRANSCRIPTIONS
    # A json request goes as it came: the audio's bytes untouched.
    assert not answers[1].request_body.response.HasField("body_mutation")
    # ...and so does its answer.
    assert not answers[3].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["route"], line["http_status_code"], line["model"]) == (
        route,
        200,
        "gpt-4o-transcribe",
    )


async def test_tokens_are_billed_audio_and_text_apart(
    processor: Processor, services: Services
) -> None:
    body, sent = form()
    await send(processor, body, sent, orjson.dumps({"text": TEXT, "usage": TOKENS}))
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        130,
        11,
        141,
    )
    assert line["prompt_audio_tokens"] == 120
    assert line["usage_reported"] is True
    assert cost(line) == TOKENS_COST
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 130
    assert sample(services, "tokens_consumed_total", token_type="completion") == 11
    assert sample(services, "aigw_token_parts_total", token_type="prompt_audio") == 120


async def test_text_is_asked_as_json_and_rendered_for_the_client(
    processor: Processor, services: Services
) -> None:
    body, sent = form(response_format="text")
    answers = await send(processor, body, sent, orjson.dumps({"text": TEXT, "usage": TOKENS}))
    assert upstream_fields(answers, sent)["response_format"] == "json"
    got, changed = client_got(answers)
    assert got == (TEXT + "\n").encode()
    assert changed["content-type"] == "text/plain; charset=utf-8"
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (130, 11)
    assert cost(line) == TOKENS_COST


async def test_whisper_seconds_are_billed_by_the_minute_and_counted_as_audio_tokens(
    processor: Processor, services: Services
) -> None:
    body, sent = form(model="whisper-1")
    reply = orjson.dumps({"text": TEXT, "usage": {"type": "duration", "seconds": 61.25}})
    await send(processor, body, sent, reply)
    line = only_line(services)
    # 61.25 s at ten tokens a second, rounded up to a tenth: 613 audio prompt tokens.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (613, 0)
    assert line["prompt_audio_tokens"] == 613
    assert cost(line) == Decimal("61.25") * PER_MINUTE / 60
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 613


async def test_srt_is_asked_as_verbose_json_and_rendered_from_its_segments(
    processor: Processor, services: Services
) -> None:
    body, sent = form(model="whisper-1", response_format="srt")
    reply = orjson.dumps(
        {
            "task": "transcribe",
            "duration": 61.25,
            "text": TEXT,
            "segments": SEGMENTS,
            "usage": {"type": "duration", "seconds": 62},
        }
    )
    answers = await send(processor, body, sent, reply)
    assert upstream_fields(answers, sent)["response_format"] == "verbose_json"
    got, _ = client_got(answers)
    assert got.decode() == (
        "1\n00:00:00,000 --> 00:00:02,500\nWe ship on Friday.\n\n"
        "2\n00:00:02,500 --> 00:01:01,250\nAlice owns the release.\n\n"
    )
    line = only_line(services)
    assert line["prompt_tokens"] == 620
    assert cost(line) == 62 * PER_MINUTE / 60


async def test_a_translation_is_billed_by_its_verbose_duration(
    processor: Processor, services: Services
) -> None:
    body, sent = form(TRANSLATIONS, model="whisper-1")
    reply = orjson.dumps({"task": "translate", "duration": 3.0, "text": TEXT, "segments": []})
    answers = await send(processor, body, sent, reply, path=TRANSLATIONS)
    mutated = set_headers(answers[1])
    assert mutated.get(":path", TRANSLATIONS) == TRANSLATIONS
    # A translation's json carries no usage: its verbose_json's duration is asked for.
    assert upstream_fields(answers, sent)["response_format"] == "verbose_json"
    got, changed = client_got(answers)
    assert orjson.loads(got) == {"text": TEXT}
    assert changed["content-type"] == "application/json"
    line = only_line(services)
    assert (line["route"], line["prompt_tokens"]) == ("openai-audio-translations", 30)
    assert cost(line) == 3 * PER_MINUTE / 60


async def test_a_stream_is_billed_by_its_done_event(
    processor: Processor, services: Services
) -> None:
    body, sent = form(stream="true")
    events = [
        {"type": "transcript.text.delta", "delta": "We ship"},
        {"type": "transcript.text.delta", "delta": " on Friday."},
        {"type": "transcript.text.done", "text": "We ship on Friday.", "usage": TOKENS},
    ]
    stream = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    answers = await send(processor, body, sent, stream, answer_headers=SSE)
    assert not answers[3].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert line["stream"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (130, 11)
    assert cost(line) == TOKENS_COST


async def test_the_quota_reserves_the_audio_by_the_files_size() -> None:
    body, sent = form()
    parsed = read_form(body, sent["content-type"])
    # 32,004 bytes at 16,000 a second: three seconds, rounded up.
    assert audio_api.estimated_seconds(parsed) == 3
    assert audio_api.audio_prompt_tokens(parsed) == 30
    assert audio_api.transcript_allowance(parsed) == 12


# --- refusals -----------------------------------------------------------------------------


async def refused(
    processor: Processor, body: bytes, sent: dict[str, str], path: str = TRANSCRIPTIONS
) -> tuple[int, dict[str, Any]]:
    answers = await send(processor, body, sent, path=path)
    status, answer = immediate(answers[-1])
    return status, answer["error"]


async def test_a_form_without_a_file_is_a_400_naming_file(
    processor: Processor, services: Services
) -> None:
    request = httpx.Request(
        "POST", "http://gateway/x", data={"model": "whisper-1"}, files=[("other", ("a", b"1"))]
    )
    sent = {**OPENAI_KEY, "content-type": request.headers["content-type"]}
    status, error = await refused(processor, request.read(), sent)
    assert (status, error["param"], error["code"]) == (400, "other", "invalid_multipart")
    body = request.read().replace(b'name="other"', b'name="prompt2"').replace(b'filename="a"', b"")
    status, error = await refused(processor, body, sent)
    assert (status, error["param"]) == (400, "file")
    assert "'file' is required" in error["message"]


async def test_a_form_without_a_model_is_a_400(processor: Processor) -> None:
    body, sent = form(model=None)
    status, error = await refused(processor, body, sent)
    assert (status, error["param"]) == (400, "model")


async def test_an_unknown_model_is_a_404(processor: Processor) -> None:
    body, sent = form(model="whisper-9")
    status, error = await refused(processor, body, sent)
    assert (status, error["code"]) == (404, "model_not_found")


async def test_a_chat_model_is_a_400_naming_where_it_is_served(processor: Processor) -> None:
    body, sent = form(model="claude-3-5-haiku-latest")
    status, error = await refused(processor, body, sent)
    assert (status, error["code"]) == (400, "unsupported_model_for_route")
    assert "/v1/audio/transcriptions" in error["message"]


async def test_a_transcription_model_on_the_chat_route_is_a_400(processor: Processor) -> None:
    chat = orjson.dumps({"model": "whisper-1", "messages": [{"role": "user", "content": "hi"}]})
    answers = await run_stream(
        processor,
        [request_headers("/v1/chat/completions", headers=OPENAI_KEY), request_body(chat)],
    )
    status, answer = immediate(answers[-1])
    assert (status, answer["error"]["code"]) == (400, "unsupported_model_for_route")
    assert "/v1/audio/transcriptions" in answer["error"]["message"]


async def test_a_malformed_form_is_a_400_invalid_multipart(processor: Processor) -> None:
    body, sent = form()
    status, error = await refused(processor, body[: len(body) // 2], sent)
    assert (status, error["code"]) == (400, "invalid_multipart")
    status, error = await refused(processor, b'{"model": "whisper-1"}', {**OPENAI_KEY, **JSON})
    assert (status, error["code"]) == (400, "invalid_multipart")


async def test_an_unserved_format_is_a_400_naming_the_formats(processor: Processor) -> None:
    body, sent = form(response_format="mp3")
    status, error = await refused(processor, body, sent)
    assert (status, error["param"]) == (400, "response_format")
    assert "json, text, srt, verbose_json, vtt" in error["message"]


async def test_a_streamed_translation_is_a_400(processor: Processor) -> None:
    body, sent = form(TRANSLATIONS, model="whisper-1", stream="true")
    status, error = await refused(processor, body, sent, path=TRANSLATIONS)
    assert (status, error["param"]) == (400, "stream")


async def test_a_form_over_the_routes_limit_is_a_413(processor: Processor) -> None:
    _, sent = form()
    answers = await run_stream(
        processor,
        [request_headers(TRANSCRIPTIONS, headers={**sent, "content-length": str(27 * 2**20)})],
    )
    status, answer = immediate(answers[-1])
    assert status == 413
    assert "27262976" in answer["error"]["message"]


async def test_another_audio_path_is_a_404(processor: Processor) -> None:
    answers = await run_stream(processor, [request_headers("/v1/audio/voices", headers=OPENAI_KEY)])
    status, answer = immediate(answers[-1])
    assert (status, answer["error"]["code"]) == (404, "route_not_found")


async def test_a_bad_key_is_a_401_before_the_provider(processor: Processor) -> None:
    _, sent = form()
    sent = {**sent, "authorization": "Bearer nobody"}
    answers = await run_stream(processor, [request_headers(TRANSCRIPTIONS, headers=sent)])
    status, _ = immediate(answers[-1])
    assert status == 401


# --- the answer's reading -------------------------------------------------------------------


def test_a_vtt_without_segments_is_one_cue_of_the_whole_text() -> None:
    shown = rendered({"text": TEXT, "duration": 4.5}, "vtt")
    assert shown == f"WEBVTT\n\n00:00:00.000 --> 00:00:04.500\n{TEXT}\n\n".encode()


def test_a_report_without_its_audio_part_counts_what_its_text_leaves() -> None:
    usage = usage_from_audio(
        {"usage": {"type": "tokens", "input_tokens": 50, "output_tokens": 5, "total_tokens": 55}}
    )
    assert usage is not None and (usage.prompt_tokens, usage.audio_tokens) == (50, 50)


def test_a_bad_duration_is_no_usage() -> None:
    assert usage_from_audio({"usage": {"type": "duration", "seconds": "soon"}}) is None
    assert usage_from_audio({"duration": -1}) is None


async def test_a_stream_cut_before_its_done_event_is_charged_the_estimate(
    processor: Processor, services: Services
) -> None:
    body, sent = form(stream="true")
    delta = orjson.dumps({"type": "transcript.text.delta", "delta": "We ship"})
    stream = b"data: " + delta + b"\n\n"
    await send(processor, body, sent, stream, answer_headers=SSE)
    line = only_line(services)
    assert line["usage_reported"] is False
    assert line["usage_estimated"] is True
    # The audio's estimate from the file's size: three seconds, thirty tokens.
    assert line["prompt_tokens"] == 30


async def test_a_stream_failed_by_an_error_event_first_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    body, sent = form(stream="true")
    error = orjson.dumps({"type": "error", "error": {"type": "server_error", "message": "x"}})
    await send(processor, body, sent, b"data: " + error + b"\n\n", answer_headers=SSE)
    line = only_line(services)
    assert line["prompt_tokens"] == 0 and line["cost_usd"] == 0


async def test_array_fields_may_repeat_and_go_on_as_sent(
    processor: Processor, services: Services
) -> None:
    """``timestamp_granularities=["word", "segment"]``: the SDK sends one
    ``timestamp_granularities[]`` part per value (before, any repeated field was a 400)."""
    request = httpx.Request(
        "POST",
        "http://gateway/x",
        data={
            "model": "whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
        files=[("file", ("meeting.wav", AUDIO, "audio/wav"))],
    )
    body = request.read()
    assert body.count(b'name="timestamp_granularities[]"') == 2
    sent = {**OPENAI_KEY, "content-type": request.headers["content-type"]}
    reply = orjson.dumps(
        {"duration": 2.0, "text": TEXT, "usage": {"type": "duration", "seconds": 2}}
    )
    answers = await send(processor, body, sent, reply)
    assert not answers[1].request_body.response.HasField("body_mutation")
    assert only_line(services)["prompt_tokens"] == 20
    # A repeated plain field is still refused: which one the provider reads is a guess.
    twice = body.replace(b'name="response_format"', b'name="model"')
    status, error = await refused(processor, twice, sent)
    assert (status, error["code"]) == (400, "invalid_multipart")


async def test_the_prompt_is_guarded_and_a_masked_one_spliced_into_the_form() -> None:
    """The ``prompt`` field (text that guides the model) is read by request guards as an
    image edit's is; a masked one goes on spliced into the form, the audio intact."""
    gateway = Gateway(
        config_with(WORKSHOP, {"openai-audio-transcriptions": {"guardrails": "workshop"}})
    )
    body, sent = form(prompt="Names: bob@example.com.", response_format="text")
    answers = await run_stream(
        gateway.processor, [request_headers(TRANSCRIPTIONS, headers=sent), request_body(body)]
    )
    upstream = answers[-1].request_body.response.body_mutation.body
    sent_on = read_form(upstream, sent["content-type"])
    assert "bob@example.com" not in sent_on.fields["prompt"]
    assert sent_on.fields["response_format"] == "json"
    assert upstream[sent_on.files[0].start : sent_on.files[0].end] == AUDIO


# --- answers without a count: billed all the same (found in review) -----------------------

# The quota's estimate of AUDIO: three seconds, thirty audio tokens, twelve of transcript.
ESTIMATED_AUDIO, ALLOWANCE = 30, 12


def estimated(line: dict[str, Any]) -> tuple[int, int, int]:
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    return line["prompt_tokens"], line["prompt_audio_tokens"], line["completion_tokens"]


async def test_a_json_answer_without_usage_is_charged_its_audio_and_transcript(
    processor: Processor, services: Services
) -> None:
    # What many OpenAI-compatible servers answer: the text, no usage.
    body, sent = form(response_format="text")
    await send(processor, body, sent, orjson.dumps({"text": TEXT}))
    line = only_line(services)
    transcript = -(-len(TEXT) // 4)
    assert estimated(line) == (ESTIMATED_AUDIO, ESTIMATED_AUDIO, transcript)
    # The audio at the audio input price, not the text one.
    assert cost(line) == (ESTIMATED_AUDIO * AUDIO_IN + transcript * OUT) / 10**6


async def test_an_answer_in_another_format_than_asked_is_charged_by_the_minute(
    processor: Processor, services: Services
) -> None:
    # whisper-1 behind a server that answers text whatever format it was asked.
    body, sent = form(model="whisper-1", response_format="text")
    plain = {"content-type": "text/plain; charset=utf-8"}
    await send(processor, body, sent, TEXT.encode() + b"\n", answer_headers=plain)
    line = only_line(services)
    assert estimated(line)[:2] == (ESTIMATED_AUDIO, ESTIMATED_AUDIO)
    assert cost(line) == PER_MINUTE * 3 / 60


async def test_a_client_that_hangs_up_before_the_answer_is_charged_the_reservation(
    processor: Processor, services: Services
) -> None:
    # A long recording, a client's short timeout: the provider transcribes it all the same.
    body, sent = form()
    await run_stream_reset(
        processor, [request_headers(TRANSCRIPTIONS, headers=sent), request_body(body)]
    )
    line = only_line(services)
    assert estimated(line) == (ESTIMATED_AUDIO, ESTIMATED_AUDIO, ALLOWANCE)
    assert cost(line) == (ESTIMATED_AUDIO * AUDIO_IN + ALLOWANCE * OUT) / 10**6


async def test_a_cut_stream_is_charged_its_audio_and_the_text_it_carried(
    processor: Processor, services: Services
) -> None:
    body, sent = form(stream="true")
    deltas = [{"type": "transcript.text.delta", "delta": "We ship on Friday. " * 10}] * 2
    stream = b"".join(b"data: " + orjson.dumps(d) + b"\n\n" for d in deltas)
    await send(processor, body, sent, stream, answer_headers=SSE)
    line = only_line(services)
    transcript = -(-(2 * len("We ship on Friday. " * 10)) // 4)
    assert estimated(line) == (ESTIMATED_AUDIO, ESTIMATED_AUDIO, transcript)
    assert cost(line) == (ESTIMATED_AUDIO * AUDIO_IN + transcript * OUT) / 10**6


@pytest.mark.parametrize(
    ("model", "micros"),
    [
        # 30 audio tokens at $6 per million and 12 of transcript at $10: 180 + 120.
        ("gpt-4o-transcribe", 300),
        # Three seconds at $0.006 a minute; whisper-1 writes no billed tokens.
        ("whisper-1", 300),
    ],
)
def test_a_budget_reserves_the_audio_at_its_own_price(
    config: GatewayConfig, services: Services, model: str, micros: int
) -> None:
    body, sent = form(model=model)
    ctx = RequestContext(runtime=Runtime(config, services))
    ctx.route = ctx.runtime.routes.named("openai-audio-transcriptions")
    ctx.model = model
    ctx.form = read_form(body, sent["content-type"])
    assert estimated_usd_micros(ctx, ESTIMATED_AUDIO, ALLOWANCE) == micros


@pytest.mark.parametrize(
    "disposition",
    [
        # Two headers: this reader kept the last, a Go server's the first.
        b'Content-Disposition: form-data; name="model"\r\nContent-Disposition: form-data; name="x"',
        # Two names in one header: the same, within it.
        b'Content-Disposition: form-data; name="model"; name="x"',
    ],
)
async def test_a_part_naming_its_field_two_ways_is_refused(
    processor: Processor, services: Services, disposition: bytes
) -> None:
    # A hidden model a provider could read where the gateway checked whisper-1's access.
    body, sent = form(model="whisper-1")
    boundary = sent["content-type"].split("boundary=")[1].encode()
    hidden = b"--" + boundary + b"\r\n" + disposition + b"\r\n\r\ngpt-4o-transcribe\r\n"
    status, error = await refused(processor, hidden + body, sent)
    assert (status, error["code"]) == (400, "invalid_multipart")
    assert only_line(services)["model"] is None
