"""A spoken exchange with an OpenAI audio model is billed at the audio prices, through
the real stack: Envoy, the gateway, its embedded Valkey and the mock provider, driven by
the official ``openai`` client.

OpenAI's audio chat models bill audio far above text (gpt-audio: $32 and $64 per million
audio tokens in and out, against $2.50 and $10 of text) and say in their usage how many
of each count is audio; the mock answers ``input_audio`` parts and ``modalities:
["text", "audio"]`` so. The log line, the cost counter and ``extproc usage report``
agree, to the picodollar, on the audio-priced cost, whole and streamed.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

KEY_ID, KEY = "audio-team", "audio-team-key-5d7e"
MODEL = "gpt-audio"
# USD per million: text in, text out, audio in, audio out (gpt-audio's list prices).
TEXT_IN, TEXT_OUT, AUDIO_IN, AUDIO_OUT = (Decimal(p) for p in ("2.50", "10", "32", "64"))
MESSAGES: Any = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What does the caller ask for?"},
            {"type": "input_audio", "input_audio": {"data": "UklGR" * 200, "format": "wav"}},
        ],
    }
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("openai-audio")
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY})
    raw["models"].append({"name": MODEL, "provider": "mock"})
    raw["pricing"]["models"][MODEL] = {
        "input_per_million": str(TEXT_IN),
        "output_per_million": str(TEXT_OUT),
        "audio_input_per_million": str(AUDIO_IN),
        "audio_output_per_million": str(AUDIO_OUT),
    }
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def at_audio_prices(usage: Any) -> Decimal:
    """What the usage the client read costs at the audio prices."""
    audio_in = usage.prompt_tokens_details.audio_tokens
    audio_out = usage.completion_tokens_details.audio_tokens
    assert audio_in > 0 and audio_out > 0
    return (
        (usage.prompt_tokens - audio_in) * TEXT_IN + audio_in * AUDIO_IN
        + (usage.completion_tokens - audio_out) * TEXT_OUT + audio_out * AUDIO_OUT
    ) / 10**6  # fmt: skip


def test_a_spoken_exchange_is_billed_at_the_audio_prices(stack: LocalStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)
    spoken: Any = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, **spoken)
    whole = raw.parse()
    assert whole.choices[0].message.audio is not None
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        **spoken,
    ) as response:  # fmt: skip
        stream_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    streamed = chunks[-1].usage
    assert streamed is not None
    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(raw.headers["x-request-id"])[0], log.for_request(stream_id)[0]]
    for line, usage in zip(lines, (whole.usage, streamed), strict=True):
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert Decimal(str(line["cost_usd"])) == at_audio_prices(usage)
    billed = sum(Decimal(str(line["cost_usd"])) for line in lines)

    def row() -> dict[str, Any] | None:
        found = usage_rows(stack, "api_key").get(KEY_ID)
        return found if found is not None and found["requests"] == 2 else None

    flushed = wait_for(row, 20)
    assert flushed, "no rollup of the two requests"
    assert Decimal(flushed["cost_usd"]) == billed
    assert metric(scrape(stack.metrics_url), "aigw_cost_usd_total", api_key_id=KEY_ID) == float(
        billed
    )
