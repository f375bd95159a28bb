"""Speech to text through the real stack: Envoy, the gateway, its embedded Valkey and the
mock provider, driven by the official openai client.

``client.audio.transcriptions.create`` and ``client.audio.translations.create`` (before:
Envoy's 404, no route; the meeting recordings teams sent were neither counted nor
billed) reach the provider with its key and the audio's bytes intact; the client gets
the text in the format it asked for (``text`` and ``srt`` rendered by the gateway from
the JSON it asked the provider for, so that the usage is read); the log line,
``tokens_consumed_total``, the cost counter, the usage report and the quota agree on the
usage: tokens for gpt-4o-transcribe, seconds for whisper-1 (ten audio tokens a second,
billed by the minute).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm import count_tokens
from extproc.mock_llm.audio_api import BYTES_PER_SECOND
from extproc.multipart_form import read_form
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

KEY_ID, KEY = "minutes", "minutes-key-4c21"
WHISPER_KEY_ID, WHISPER_KEY = "captions", "captions-key-8e02"
ADMIN_TOKEN = "dev-admin-token"
SAID = "We ship on Friday. Alice owns the release."
# What the mock hears is the file's text; its duration one second per 16,000 bytes: 2.5 s.
RECORDING = SAID.encode().ljust(BYTES_PER_SECOND * 5 // 2)
SECONDS = 2.5
# The default config's prices.
TEXT_IN, AUDIO_IN, OUT = Decimal("2.50"), Decimal("6.00"), Decimal("10.00")  # per million
PER_MINUTE = Decimal("0.006")  # whisper-1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": WHISPER_KEY_ID, "key": WHISPER_KEY, "user_id": "ines"})
    raw["quotas"] = {
        "rules": [
            {
                "name": "minutes-tokens",
                "subject": "api_key",
                "match": [KEY_ID, WHISPER_KEY_ID],
                "tokens_per_day": 100_000_000,
            }
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("audio"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack, key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def tokens_used(stack: LocalStack, key_id: str) -> int:
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as quotas:
        state = quotas.get("api_key", key_id)
    return sum(limit.used for limit in state.limits if limit.kind == "tokens")


def test_transcriptions_are_billed_by_tokens_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog, tmp_path: Path
) -> None:
    client = client_of(stack)
    recording = tmp_path / "standup.wav"
    recording.write_bytes(RECORDING)
    before = scrape(stack.metrics_url)
    lines: list[dict[str, Any]] = []

    # JSON, the default: the provider's answer as it came, its usage read.
    with recording.open("rb") as file:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="gpt-4o-transcribe", file=file
        )
    answer = raw.parse()
    assert answer.text == SAID
    assert answer.usage is not None and answer.usage.type == "tokens"
    audio = math.ceil(SECONDS * 10)
    assert answer.usage.input_tokens == audio
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["route"], line["http_status_code"], line["model"]) == (
        "openai-audio-transcriptions",
        200,
        "gpt-4o-transcribe",
    )
    assert (line["prompt_tokens"], line["prompt_audio_tokens"]) == (audio, audio)
    assert line["completion_tokens"] == count_tokens(SAID)
    assert cost(line) == (audio * AUDIO_IN + count_tokens(SAID) * OUT) / 10**6
    lines.append(line)
    # The provider got its own key and the audio as it was.
    [sent] = [r for r in mock_requests(stack) if r["path"].endswith("/audio/transcriptions")]
    assert sent["headers"]["authorization"] != f"Bearer {KEY}"
    assert base64.b64decode(sent["body_base64"]).count(RECORDING) == 1

    # Text, whose answer carries no usage: asked as JSON, the text rendered for the client.
    raw_text = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("standup.wav", RECORDING), response_format="text"
    )
    assert raw_text.parse() == SAID + "\n"
    assert raw_text.headers["content-type"].startswith("text/plain")
    forms = [r for r in mock_requests(stack) if r["path"].endswith("/audio/transcriptions")]
    body = base64.b64decode(forms[-1]["body_base64"])
    assert read_form(body, forms[-1]["headers"]["content-type"]).fields["response_format"] == (
        "json"
    )
    [line] = gateway_log.for_request(raw_text.headers["x-request-id"])
    assert (line["prompt_tokens"], line["completion_tokens"]) == (audio, count_tokens(SAID))
    lines.append(line)

    # A stream: its done event carries the usage.
    stream = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("standup.wav", RECORDING), stream=True
    )
    events = list(stream)
    assert events[-1].type == "transcript.text.done" and events[-1].text == SAID
    streamed = wait_for(
        lambda: [
            found
            for found in gateway_log.lines()
            if found.get("model") == "gpt-4o-mini-transcribe" and found.get("stream")
        ],
        10,
    )
    [line] = streamed
    assert line["usage_reported"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (audio, count_tokens(SAID))
    assert cost(line) == (audio * Decimal("3.00") + count_tokens(SAID) * Decimal("5.00")) / 10**6
    lines.append(line)

    billed = sum(cost(each) for each in lines)
    total = sum(each["total_tokens"] for each in lines)
    prompt = sum(each["prompt_tokens"] for each in lines)
    after = scrape(stack.metrics_url)
    grew = metric(after, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt") - metric(
        before, "tokens_consumed_total", api_key_id=KEY_ID, token_type="prompt"
    )
    assert grew == prompt
    assert metric(after, "aigw_cost_usd_total", api_key_id=KEY_ID) == float(billed)
    row = wait_for(lambda: (found := usage_rows(stack, "api_key").get(KEY_ID)) and (
        found["requests"] == 3 and found), 20)  # fmt: skip
    assert row, "no rollup of the three transcriptions"
    assert Decimal(row["cost_usd"]) == billed
    assert row["total_tokens"] == total
    assert row["prompt_audio_tokens"] == 3 * audio
    assert tokens_used(stack, KEY_ID) == total


def test_whisper_is_billed_by_the_minute_and_renders_subtitles(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = client_of(stack, WHISPER_KEY)
    before = scrape(stack.metrics_url)
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("standup.wav", RECORDING), response_format="srt"
    )
    srt = raw.parse()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,250\nWe ship on Friday.\n\n2\n")
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    # The mock reports whole seconds (3): thirty audio tokens, billed as three seconds.
    assert (line["prompt_tokens"], line["prompt_audio_tokens"], line["completion_tokens"]) == (
        30,
        30,
        0,
    )
    assert cost(line) == 3 * PER_MINUTE / 60

    translated = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("standup.wav", RECORDING)
    )
    assert translated.parse().text == SAID
    [translation] = gateway_log.for_request(translated.headers["x-request-id"])
    # A translation's duration, from the verbose_json the gateway asked for: 2.5 s.
    assert translation["route"] == "openai-audio-translations"
    assert translation["prompt_tokens"] == 25
    assert cost(translation) == Decimal("2.5") * PER_MINUTE / 60

    billed = cost(line) + cost(translation)
    after = scrape(stack.metrics_url)
    key = WHISPER_KEY_ID
    grew = metric(after, "tokens_consumed_total", api_key_id=key, token_type="prompt") - metric(
        before, "tokens_consumed_total", api_key_id=key, token_type="prompt"
    )
    assert grew == 55
    assert metric(after, "aigw_cost_usd_total", api_key_id=key) == pytest.approx(float(billed))
    row = wait_for(lambda: (found := usage_rows(stack, "api_key").get(key)) and (
        found["requests"] == 2 and found), 20)  # fmt: skip
    assert row, "no rollup of the whisper requests"
    assert Decimal(row["cost_usd"]) == billed
    assert row["prompt_tokens"] == 55


def test_the_model_list_names_the_transcription_models(stack: LocalStack) -> None:
    names = {model.id for model in client_of(stack).models.list()}
    assert {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"} <= names


def test_bad_requests_are_openai_shaped_errors(stack: LocalStack) -> None:
    client = client_of(stack)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.audio.transcriptions.create(model="whisper-9", file=("a.wav", RECORDING))
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as chat_model:
        client.audio.transcriptions.create(
            model="text-embedding-3-small", file=("a.wav", RECORDING)
        )
    assert chat_model.value.code == "unsupported_model_for_route"
    # No file: the SDK requires one, so the form is sent by hand.
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{stack.base_url}/v1/audio/transcriptions"
    no_file = httpx.post(
        url,
        headers={**headers, "content-type": "multipart/form-data; boundary=b"},
        content=b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--b--\r\n",
        timeout=10,
    )
    assert no_file.status_code == 400
    assert no_file.json()["error"]["param"] == "file"
    malformed = httpx.post(
        url,
        headers={**headers, "content-type": "multipart/form-data; boundary=x"},
        content=b"--x\r\nnot a part",
        timeout=10,
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_multipart"
    too_large = httpx.post(
        url,
        headers=headers,
        data={"model": "whisper-1"},
        files={"file": ("long.wav", b"\0" * (26 * 1024 * 1024 + 1))},
        timeout=30,
    )
    assert too_large.status_code == 413
    assert "error" in too_large.json()
