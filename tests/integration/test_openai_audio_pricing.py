"""A spoken exchange with an OpenAI audio model is billed at the audio prices, through
the real stack: Envoy, the gateway, its embedded Valkey and the mock provider, driven by
the official ``openai`` client.

OpenAI's audio chat models bill audio far above text (gpt-audio: $32 and $64 per million
audio tokens in and out, against $2.50 and $10 of text) and say in their usage how many
of each count is audio; the mock answers ``input_audio`` parts and ``modalities:
["text", "audio"]`` so. The log line, the cost counter and ``extproc usage report``
agree, to the picodollar, on the audio-priced cost, whole and streamed; and the report
and the export carry the audio counts the log lines have, so the report's own counts at
the price table's prices are its cost.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import orjson
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
# A key of its own for the report test, with a user and a group: its rows are its own.
CALL_CENTRE = {"id": "call-centre", "key": "call-centre-key-81b2", "user_id": "carol",
               "group_id": "support"}  # fmt: skip
AUDIO_COUNTS = ("prompt_audio_tokens", "cached_audio_tokens", "completion_audio_tokens")
ADMIN_TOKEN = "dev-admin-token"  # the default config's, for the management API
BY_IDENTITY = ("report", "--by", "api_key,user,group,model", "--format", "json")
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
    raw["auth"]["api_keys"].extend([{"id": KEY_ID, "key": KEY}, CALL_CENTRE])
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


def cli(stack: LocalStack, *args: str) -> str:
    """An ``extproc usage`` command as the operator runs it, against the stack's store."""
    return subprocess.run(
        [sys.executable, "-m", "extproc", "usage", *args, "--config", str(stack.config_path)],
        env=stack.env, capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip


def priced(counts: dict[str, Any]) -> Decimal:
    """A report row's (or log line's) counts at the price table's prices, audio apart."""
    audio_in, audio_out = counts["prompt_audio_tokens"], counts["completion_audio_tokens"]
    return (
        (int(counts["prompt_tokens"]) - int(audio_in)) * TEXT_IN + int(audio_in) * AUDIO_IN
        + (int(counts["completion_tokens"]) - int(audio_out)) * TEXT_OUT
        + int(audio_out) * AUDIO_OUT
    ) / 10**6  # fmt: skip


def test_the_report_and_export_carry_the_log_lines_audio_and_reconcile_with_the_cost(
    stack: LocalStack,
) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=CALL_CENTRE["key"], max_retries=0
    )
    spoken: Any = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, **spoken
        )
        assert raw.parse().usage.completion_tokens_details.audio_tokens > 0
        ids.append(raw.headers["x-request-id"])
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        **spoken,
    ) as response:  # fmt: skip
        ids.append(response.headers["x-request-id"])
        assert list(response.parse())[-1].usage is not None
    log = GatewayLog(stack.gateway_log)
    lines = [log.for_request(request_id)[0] for request_id in ids]
    sums = {name: sum(line[name] for line in lines) for name in AUDIO_COUNTS}
    assert sums["prompt_audio_tokens"] > 0 and sums["completion_audio_tokens"] > 0
    billed = sum(Decimal(str(line["cost_usd"])) for line in lines)

    def rows() -> list[dict[str, Any]] | None:
        found = orjson.loads(cli(stack, *BY_IDENTITY))["rows"]
        mine = [row for row in found if row["api_key_id"] == CALL_CENTRE["id"]]
        return mine if mine and mine[0]["requests"] == len(lines) else None

    flushed = wait_for(rows, 20)
    assert flushed, "no rollup of the three requests"
    [row] = flushed
    assert (row["user_id"], row["group_id"], row["model"]) == ("carol", "support", MODEL)
    # Before: no audio key in the report; its tokens at the text prices were an eighth of
    # its cost_usd, which nothing in the report explained.
    assert {name: row[name] for name in AUDIO_COUNTS} == sums
    assert Decimal(row["cost_usd"]) == billed == priced(row)

    # The same report through the gateway's management API (its answer's new fields).
    through_api = orjson.loads(cli(stack, *BY_IDENTITY, "--api", "--token", ADMIN_TOKEN))
    [answered] = [found for found in through_api["rows"] if found["api_key_id"] == "call-centre"]
    assert answered == row

    # The billing export by group: the same counts, in the CSV's audio columns.
    export = list(csv.DictReader(io.StringIO(cli(stack, "export", "--by", "group"))))
    [support] = [found for found in export if found["group_id"] == "support"]
    assert {name: int(support[name]) for name in AUDIO_COUNTS} == sums
    assert Decimal(support["cost_usd"]) == billed == priced(support)
    # And the table shows them, the period having audio.
    table = cli(stack, "report", "--by", "user")
    header = table.splitlines()[1].split()
    carol = next(line.split() for line in table.splitlines() if line.startswith("carol"))
    shown = dict(zip(header, carol, strict=True))
    assert int(shown["prompt_audio_tokens"]) == sums["prompt_audio_tokens"]
    assert int(shown["completion_audio_tokens"]) == sums["completion_audio_tokens"]
