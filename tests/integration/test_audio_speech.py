"""Text to speech through the real stack: Envoy, the gateway, its embedded Valkey and the
mock provider, driven by the official openai client.

``client.audio.speech.create`` (before: a 400 ``unsupported_endpoint`` from the audio
prefix routes) reaches the provider with its key; the client gets the audio's bytes as
the provider wrote them; the log line, ``tokens_consumed_total``, the cost counter and the
quota agree on the usage: the characters of ``input``, one prompt token each, billed at
the model's price per character (tts-1, tts-1-hd), or the tokens gpt-4o-mini-tts reports
in its event stream's done event.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm.speech_api import speech_usage, spoken
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    wait_for,
    write_config,
)

KEY_ID, KEY = "narrator", "narrator-key-77d1"
ADMIN_TOKEN = "dev-admin-token"
SAID = "Welcome aboard. The next stop is Köln Hauptbahnhof."  # 51 characters
# The default config's prices, USD per million characters.
TTS_1, TTS_1_HD = Decimal("15.00"), Decimal("30.00")
# gpt-4o-mini-tts', USD per million tokens: text in, audio out.
MINI_IN, MINI_OUT = Decimal("0.60"), Decimal("12.00")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY, "user_id": "ines"})
    raw["quotas"] = {
        "rules": [
            {
                "name": "narrator-tokens",
                "subject": "api_key",
                "match": [KEY_ID],
                "tokens_per_day": 100_000_000,
            }
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("speech"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack, base: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base}", api_key=KEY, max_retries=0)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def tokens_used(stack: LocalStack) -> int:
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as quotas:
        state = quotas.get("api_key", KEY_ID)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def speech_sent(stack: LocalStack) -> list[dict[str, Any]]:
    """The bodies the provider got at its speech endpoint, in order."""
    found = [r for r in mock_requests(stack) if r["path"].endswith("/audio/speech")]
    return [r["json"] for r in found]


def test_speech_is_streamed_to_the_client_and_billed_per_character_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog, tmp_path: Path
) -> None:
    client = client_of(stack)
    before = scrape(stack.metrics_url)
    used_before = tokens_used(stack)
    lines: list[dict[str, Any]] = []

    # Streamed to a file, as the SDK's docs show it.
    target = tmp_path / "welcome.mp3"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SAID
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        response.stream_to_file(target)
        request_id = response.headers["x-request-id"]
    assert target.read_bytes() == spoken({"voice": "alloy", "input": SAID})
    [line] = gateway_log.for_request(request_id)
    assert (line["route"], line["http_status_code"], line["model"]) == (
        "openai-audio-speech",
        200,
        "tts-1",
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (len(SAID), 0)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert cost(line) == len(SAID) * TTS_1 / 10**6
    lines.append(line)

    # Whole, through an SDK based at /openai/v1, tts-1-hd in WAV.
    raw = client_of(stack, "/openai/v1").audio.speech.with_raw_response.create(
        model="tts-1-hd", voice="verse", input=SAID, response_format="wav"
    )
    assert raw.content == spoken({"voice": "verse", "input": SAID, "response_format": "wav"})
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["prompt_tokens"]) == ("openai-prefix-audio-speech", len(SAID))
    assert cost(line) == len(SAID) * TTS_1_HD / 10**6
    lines.append(line)

    # The provider got the text as sent, under its own key.
    recorded = [r for r in mock_requests(stack) if r["path"].endswith("/audio/speech")]
    assert [r["json"]["input"] for r in recorded] == [SAID, SAID]
    assert all(r["headers"]["authorization"] != f"Bearer {KEY}" for r in recorded)

    billed = sum(cost(each) for each in lines)
    after = scrape(stack.metrics_url)
    grew = metric(after, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt") - metric(
        before, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt"
    )
    assert grew == 2 * len(SAID)
    completion = metric(after, "tokens_consumed_total", api_key_id=KEY_ID, token_type="completion")
    assert completion == metric(
        before, "tokens_consumed_total", api_key_id=KEY_ID, token_type="completion"
    )
    spent = metric(after, "aigw_cost_usd_total", api_key_id=KEY_ID) - metric(
        before, "aigw_cost_usd_total", api_key_id=KEY_ID
    )
    assert spent == pytest.approx(float(billed))
    assert wait_for(lambda: tokens_used(stack) - used_before == 2 * len(SAID), 10)


def test_a_bad_input_is_refused_before_the_provider(stack: LocalStack) -> None:
    sent_before = len(speech_sent(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    assert refused.value.param == "input"
    with pytest.raises(openai.BadRequestError) as refused:
        client_of(stack).audio.speech.create(
            model="tts-1",
            voice="alloy",
            input=SAID,
            response_format="ogg",  # type: ignore[arg-type]
        )
    assert refused.value.param == "response_format"
    with pytest.raises(openai.NotFoundError):
        client_of(stack).audio.speech.create(model="tts-9", voice="alloy", input=SAID)
    assert len(speech_sent(stack)) == sent_before


def test_audio_cut_before_its_end_is_charged_the_characters(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The provider drops the connection after two of the audio's four pieces: the client
    gets a broken body, and the request is charged its characters, as an estimate."""
    before = scrape(stack.metrics_url)
    client = client_of(stack)
    request_id = ""
    with (
        # The client's HTTP library's own error (the openai client's transport's).
        pytest.raises(Exception, match="incomplete chunked read"),
        client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="alloy",
            input=SAID,
            extra_headers={"x-mock-fault": "reset_after=2;interval=0.3"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        response.read()
    [line] = gateway_log.for_request(request_id)
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (len(SAID), 0)
    assert cost(line) == len(SAID) * TTS_1 / 10**6
    after = scrape(stack.metrics_url)
    grew = metric(after, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt") - metric(
        before, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt"
    )
    assert grew == len(SAID)


def test_gpt_4o_mini_tts_is_billed_by_the_tokens_its_events_report(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """Asked for raw audio, the gateway asks the provider for events (their done event
    alone carries the usage) and gives the client the audio they carry, decoded; asked
    for events, the client gets them as they came. Either way the log line, the token
    counter and the cost carry the done event's usage."""
    client = client_of(stack)
    before = scrape(stack.metrics_url)
    body = {"voice": "coral", "input": SAID, "instructions": "Speak calmly."}
    audio = spoken(body)
    usage = speech_usage(body, audio)

    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input=SAID, instructions="Speak calmly."
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        got = response.read()
        raw_id = response.headers["x-request-id"]
    assert got == audio
    assert speech_sent(stack)[-1]["stream_format"] == "sse"
    [raw_line] = gateway_log.for_request(raw_id)

    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="coral",
        input=SAID,
        instructions="Speak calmly.",
        stream_format="sse",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            orjson.loads(line[len("data: ") :])
            for line in response.read().decode().splitlines()
            if line.startswith("data: ")
        ]
        sse_id = response.headers["x-request-id"]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == audio
    assert events[-1] == {"type": "speech.audio.done", "usage": usage}
    [sse_line] = gateway_log.for_request(sse_id)

    for line in (raw_line, sse_line):
        assert (line["model"], line["http_status_code"]) == ("gpt-4o-mini-tts", 200)
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            usage["input_tokens"],
            usage["output_tokens"],
        )
        assert line["usage_reported"] is True
        assert (
            cost(line)
            == (usage["input_tokens"] * MINI_IN + usage["output_tokens"] * MINI_OUT) / 10**6
        )
    after = scrape(stack.metrics_url)
    for token_type, key in (("prompt", "input_tokens"), ("completion", "output_tokens")):
        grew = metric(
            after, "tokens_consumed_total", api_key_id=KEY_ID, token_type=token_type
        ) - metric(before, "tokens_consumed_total", api_key_id=KEY_ID, token_type=token_type)
        assert grew == 2 * usage[key]


@pytest.mark.parametrize("status_left", [False, True])
def test_raw_audio_whose_events_fail_before_any_audio_fails_in_the_client(
    stack: LocalStack, gateway_log: GatewayLog, tmp_path: Path, status_left: bool
) -> None:
    """gpt-4o-mini-tts' events fail (an error event) before any audio; the client asked
    for the raw audio. Once its 200 has left (the provider waited before failing), its
    response is reset; when the error came with the provider's first bytes, Envoy may
    still hold the 200, and the client then gets the provider's error as a 502. Either
    way the SDK raises instead of saving an empty file, and the request is charged
    nothing."""
    before = scrape(stack.metrics_url)
    client = client_of(stack)
    target = tmp_path / "never.mp3"
    fault = "error_after=0" + (";first_chunk_delay=0.5" if status_left else "")
    # Exception: a reset is the client's HTTP library's own error (the openai client's
    # transport's).
    with (
        pytest.raises(Exception) as raised,
        client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="coral",
            input=SAID,
            extra_headers={"x-mock-fault": fault},
        ) as response,
    ):
        response.stream_to_file(target)
    assert not target.exists() or target.read_bytes() == b""
    if isinstance(raised.value, openai.APIStatusError):
        assert not status_left
        assert raised.value.status_code == 502 and raised.value.type == "server_error"
        assert "injected by x-mock-fault" in raised.value.message
        request_id = raised.value.response.headers["x-request-id"]
    else:
        assert "incomplete chunked read" in str(raised.value)
        request_id = response.headers["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert (line["outcome"], line["error_type"]) == ("upstream_error", "server_error")
    assert "injected by x-mock-fault" in line["error_message"]
    assert (line["prompt_tokens"], line["completion_tokens"], cost(line)) == (0, 0, 0)
    after = scrape(stack.metrics_url)
    failed = metric(
        after, "aigw_requests_total", model="gpt-4o-mini-tts", status_code="stream_error"
    ) - metric(before, "aigw_requests_total", model="gpt-4o-mini-tts", status_code="stream_error")
    assert failed == 1
    assert metric(after, "tokens_consumed_total", api_key_id=KEY_ID) == metric(
        before, "tokens_consumed_total", api_key_id=KEY_ID
    )


@pytest.mark.parametrize("fault", ["error_after=2", "garbage=1", "end_after=2"])
def test_raw_audio_whose_events_break_after_some_audio_fails_in_the_client(
    stack: LocalStack, gateway_log: GatewayLog, fault: str
) -> None:
    """The events fail after two deltas (an error event), carry audio that is not base64,
    or end cleanly before the done event, after the client's 200 left: the raw-audio
    client's response is reset, not a short file. A stream cut before its done event is
    charged the estimate; one whose audio broke, read on to its done event, the usage the
    provider reports there."""
    request_id = ""
    got = b""
    with (
        # The client's HTTP library's own error (the openai client's transport's).
        pytest.raises(Exception, match="incomplete chunked read"),
        client_of(stack).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="coral",
            input=SAID,
            extra_headers={"x-mock-fault": f"{fault};first_chunk_delay=0.5;interval=0.1"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        for piece in response.iter_bytes():
            got += piece
    assert spoken({"voice": "coral", "input": SAID}).startswith(got)
    [line] = gateway_log.for_request(request_id)
    assert line["outcome"] == "upstream_error"
    if fault != "error_after=2":
        assert line["error_code"] == "invalid_upstream_response"
    if fault == "garbage=1":
        # No byte of the broken audio reached the client, and the done event came.
        assert got == b""
        reported = speech_usage({"input": SAID}, spoken({"voice": "coral", "input": SAID}))
        assert line["usage_estimated"] is False
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            reported["input_tokens"],
            reported["output_tokens"],
        )
        return
    assert line["usage_estimated"] is True
    # The characters as prompt tokens, and the audio the quota reserved: two a character.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (len(SAID), 2 * len(SAID))


def test_events_asked_for_keep_their_error_event(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with client_of(stack).audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="coral",
        input=SAID,
        stream_format="sse",
        extra_headers={"x-mock-fault": "error_after=0"},
    ) as response:
        body = response.read()
        request_id = response.headers["x-request-id"]
    [event] = [orjson.loads(x[6:]) for x in body.splitlines() if x.startswith(b"data: ")]
    assert event["type"] == "error" and event["error"]["type"] == "server_error"
    [line] = gateway_log.for_request(request_id)
    assert (line["outcome"], line["prompt_tokens"]) == ("upstream_error", 0)


def test_raw_audio_whose_events_end_before_any_byte_fails_and_is_charged_nothing(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The provider's 200 event stream ended before any byte: it made no audio. The
    raw-audio client's SDK raises, and neither the log line nor the quota charges the
    audio the quota had reserved."""
    used_before = tokens_used(stack)
    request_id = ""
    # Exception: Envoy sends the 502 or, once the 200 has left, resets the response (the
    # openai client's transport's own error then).
    with (
        pytest.raises(Exception) as raised,
        client_of(stack).audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="coral",
            input=SAID,
            extra_headers={"x-mock-fault": "end_after=0"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        response.read()
    if isinstance(raised.value, openai.APIStatusError):
        request_id = raised.value.response.headers["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert line["error_code"] == "invalid_upstream_response"
    assert (line["prompt_tokens"], line["completion_tokens"], cost(line)) == (0, 0, 0)
    assert tokens_used(stack) == used_before
