"""The pictures of the Responses API's image_generation tool, billed at the image model's prices.

A Responses request whose ``tools`` holds ``{"type": "image_generation"}`` lets the
model draw: OpenAI runs its GPT Image model (gpt-image-1, gpt-image-1-mini...) and
reports that model's tokens in the response's ``tool_usage.image_gen``, apart from
``usage`` (the answering model's), billed at the image model's prices: a 1024x1024
picture of gpt-image-1 at medium quality is 1,056 output tokens at $40 per million.
Before, the gateway read ``usage`` alone: every picture cost nothing in the log line, the
cost counter, the rollups, the report and the quota.

Now the tool's tokens are parts of the request's counts (its input of the prompt, its
output of the completion), shown apart in every ledger (``image_generation_*``), priced
at the image model's entry (the response's ``tools`` names it; else the request's), and
counted against token quotas as any token is.

Each request is played through the real processor (real ext_proc messages); the
ledgers test reads the log line, the metrics, the rollup and the quota with a real
Valkey (``test_accounting_review_streams.ledgers``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from extproc.chargeback.period import Period
from extproc.chargeback.pricing import PriceTable
from extproc.chargeback.report import render
from extproc.config.pricing_model import PricingConfig
from extproc.context import IMAGE_GENERATION_COUNTS, ImageGeneration, Usage
from extproc.management.usage import rows_from_report, usage_report
from extproc.management.v1 import management_pb2 as pb
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import StoreClient
from extproc.store.usage import UsageEntry, UsageStore
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.openai_image_usage import with_image_generation
from tests.unit.quota_helpers import capped_request
from tests.unit.test_accounting_review_streams import (
    OPENAI_KEY,
    SSE,
    Answer,
    ledgers,
    sample,
)

# The store fixture, re-exported so pytest finds it here.
from tests.unit.test_accounting_review_streams import store as store

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
DAY = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
DRAWN = {
    "route": "openai-responses", "model": "gpt-4o-mini", "provider": "mock",
    "api_key_id": "team1", "user_id": "alice", "group_id": "design",
}  # fmt: skip


@pytest.fixture
async def usage_store(store: StoreClient) -> AsyncIterator[UsageStore]:
    yield UsageStore(store, "images:", retention_days=3)


RESPONSES = "/v1/responses"
MODEL = "gpt-4o-mini"
JSON = {"content-type": "application/json"}
# gpt-4o-mini's and gpt-image-1's prices in the default config, USD per million tokens.
TEXT_IN, TEXT_OUT = Decimal("0.15"), Decimal("0.60")
IMAGE_TEXT_IN, IMAGE_IN, IMAGE_OUT = Decimal("5.00"), Decimal("10.00"), Decimal("40.00")
MINI_TEXT_IN, MINI_OUT = Decimal("2.00"), Decimal("8.00")
TOOL = {"type": "image_generation"}
BODY = {"model": MODEL, "input": "Draw a cat on a mat.", "tools": [TOOL]}
# The answering model's own usage, and the picture's: 50 input tokens of which 20 are
# an image the conversation carried, 1,056 output tokens (a medium 1024x1024 picture).
USAGE = {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 0},
         "output_tokens": 9, "total_tokens": 49}  # fmt: skip
IMAGE_GEN = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 30, "image_tokens": 20},
             "output_tokens": 1_056, "total_tokens": 1_106}  # fmt: skip
TOOL_USAGE = {"image_gen": IMAGE_GEN, "web_search": {"num_requests": 0}}
# 40 and 9 tokens of gpt-4o-mini; 30 text and 20 image input tokens and 1,056 picture
# tokens of gpt-image-1.
COST = (
    40 * TEXT_IN + 9 * TEXT_OUT + 30 * IMAGE_TEXT_IN + 20 * IMAGE_IN + 1_056 * IMAGE_OUT
) / 10**6
ANSWER_COST = (40 * TEXT_IN + 9 * TEXT_OUT) / 10**6
PICTURE = {"id": "ig_1", "type": "image_generation_call", "status": "completed",
           "result": "iVBORw0KGgo="}  # fmt: skip


def response(
    status: str = "completed",
    tool_usage: Any = TOOL_USAGE,
    tools: list[dict[str, Any]] | None = None,
    usage: Any = USAGE,
) -> dict[str, Any]:
    """OpenAI's response: the tool echoed with its model filled in, as OpenAI does."""
    found: dict[str, Any] = {
        "id": "resp_1", "object": "response", "status": status, "model": MODEL,
        "output": [PICTURE], "usage": usage, "error": None,
        "tools": [{**TOOL, "model": "gpt-image-1"}] if tools is None else tools,
    }  # fmt: skip
    if tool_usage is not None:
        found["tool_usage"] = tool_usage
    return found


def typed(kind: str, document: dict[str, Any]) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **document})


def stream(terminal: bytes | None) -> list[bytes]:
    """A stream: created, the picture's events, a text delta, then ``terminal``."""
    created = {**response("in_progress", None, usage=None), "output": []}
    events = [
        typed("response.created", {"response": created}),
        typed("response.image_generation_call.generating", {"output_index": 0, "item_id": "ig_1"}),
        typed("response.output_text.delta",
              {"item_id": "m1", "output_index": 1, "content_index": 0, "delta": "A cat."}),
    ]  # fmt: skip
    if terminal is not None:
        events.append(terminal)
    return [each + b"\n\n" for each in events]


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


async def answered(
    processor: Processor, services: Services, answer: dict[str, Any], body: dict[str, Any] = BODY
) -> dict[str, Any]:
    """The log line of one Responses request answered with ``answer`` as JSON."""
    await run_stream(
        processor,
        [
            request_headers(RESPONSES, headers=OPENAI_KEY),
            request_body(orjson.dumps(body)),
            response_headers(200, JSON),
            response_body(orjson.dumps(answer), end_of_stream=True),
        ],
    )
    lines: list[dict[str, Any]] = services.access_log.lines()  # type: ignore[attr-defined]
    return lines[-1]


# --- a whole answer -----------------------------------------------------------------------------


async def test_a_picture_is_billed_at_the_image_models_prices(
    processor: Processor, services: Services
) -> None:
    line = await answered(processor, services, response())
    # Parts of the request's counts: its input of the prompt, its output of the completion.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40 + 50, 9 + 1_056)
    assert line["total_tokens"] == 90 + 1_065
    assert line["image_generation_model"] == "gpt-image-1"
    assert (
        line["image_generation_input_tokens"],
        line["image_generation_input_image_tokens"],
        line["image_generation_output_tokens"],
        line["image_generation_output_image_tokens"],
    ) == (50, 20, 1_056, 1_056)
    # Not the answering model's own image parts (none here).
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (0, 0)
    assert cost(line) == COST
    assert line["cost_priced"] is True
    for part, count in [
        ("image_generation_input", 50),
        ("image_generation_input_image", 20),
        ("image_generation_output", 1_056),
        ("image_generation_output_image", 1_056),
    ]:
        assert sample(services, "aigw_token_parts_total", token_type=part, model=MODEL) == count
    assert sample(services, "tokens_consumed_total", token_type="completion") == 9 + 1_056
    picousd = round(COST * 10**12)
    assert round(sample_float(services, "aigw_cost_usd_total") * 10**12) == picousd


def sample_float(services: Services, name: str) -> float:
    return sum(
        found.value
        for family in services.metrics.registry.collect()
        for found in family.samples
        if found.name == name
    )


async def test_the_image_models_cache_reads_are_billed_at_its_cached_prices(
    processor: Processor, services: Services
) -> None:
    """OpenAI reports the image model's cache reads in ``tool_usage.image_gen``
    (``cached_tokens``, split by ``cached_tokens_details``): gpt-image-1 bills cached text
    at $1.25 and cached images at $2.50 per million, not $5 and $10. They are the line's
    ``cached_tokens`` (a part of its prompt, as a chat's cache reads are) and the cached
    token part; before, they were billed at the uncached prices and shown nowhere."""
    details = {"cached_text_tokens": 20, "cached_image_tokens": 10}
    cached_gen = {**IMAGE_GEN, "cached_tokens": 30, "cached_tokens_details": details}
    answer = response(tool_usage={**TOOL_USAGE, "image_gen": cached_gen})
    line = await answered(processor, services, answer)
    assert line["cached_tokens"] == 30
    assert (line["prompt_tokens"], line["image_generation_input_tokens"]) == (40 + 50, 50)
    cached_text, cached_image = Decimal("1.25"), Decimal("2.50")
    expected = (
        40 * TEXT_IN + 9 * TEXT_OUT
        + 10 * IMAGE_TEXT_IN + 20 * cached_text + 10 * IMAGE_IN + 10 * cached_image
        + 1_056 * IMAGE_OUT
    ) / 10**6  # fmt: skip
    assert cost(line) == expected
    assert sample(services, "aigw_token_parts_total", token_type="cached", model=MODEL) == 30


async def test_gpt_image_1_minis_cache_reads_are_billed_at_its_published_cached_prices(
    processor: Processor, services: Services
) -> None:
    """gpt-image-1-mini reads its cache at $0.20 (text) and $0.25 (images) per million,
    OpenAI's published prices, against $2.00 and $2.50 uncached. Before, the default
    config gave it no cached prices: its cache reads were billed uncached, ten times
    over."""
    details = {"cached_text_tokens": 20, "cached_image_tokens": 10}
    cached_gen = {**IMAGE_GEN, "cached_tokens": 30, "cached_tokens_details": details}
    tools = [{**TOOL, "model": "gpt-image-1-mini"}]
    answer = response(tool_usage={**TOOL_USAGE, "image_gen": cached_gen}, tools=tools)
    line = await answered(processor, services, answer)
    assert (line["image_generation_model"], line["cached_tokens"]) == ("gpt-image-1-mini", 30)
    mini_image_in = Decimal("2.50")
    mini_cached_text, mini_cached_image = Decimal("0.20"), Decimal("0.25")
    expected = (
        40 * TEXT_IN + 9 * TEXT_OUT
        + 10 * MINI_TEXT_IN + 20 * mini_cached_text
        + 10 * mini_image_in + 10 * mini_cached_image
        + 1_056 * MINI_OUT
    ) / 10**6  # fmt: skip
    assert cost(line) == expected


async def test_the_answering_models_own_cache_reads_stay_at_its_price(
    processor: Processor, services: Services
) -> None:
    """The answering model's cache reads (``usage.input_tokens_details.cached_tokens``)
    and the image model's add up in ``cached_tokens``; each is billed at its own model's
    cached price."""
    usage = {**USAGE, "input_tokens_details": {"cached_tokens": 32}}
    details = {"cached_text_tokens": 20, "cached_image_tokens": 0}
    cached_gen = {**IMAGE_GEN, "cached_tokens": 20, "cached_tokens_details": details}
    answer = response(tool_usage={**TOOL_USAGE, "image_gen": cached_gen}, usage=usage)
    line = await answered(processor, services, answer)
    assert line["cached_tokens"] == 32 + 20
    mini_cached = Decimal("0.075")
    expected = (
        8 * TEXT_IN + 32 * mini_cached + 9 * TEXT_OUT
        + 10 * IMAGE_TEXT_IN + 20 * Decimal("1.25") + 20 * IMAGE_IN + 1_056 * IMAGE_OUT
    ) / 10**6  # fmt: skip
    assert cost(line) == expected


async def test_a_response_without_a_picture_is_billed_as_before(
    processor: Processor, services: Services
) -> None:
    """No tool_usage, or one whose image_gen counts are 0: the answer's usage alone."""
    for tool_usage in (None, {"image_gen": {**IMAGE_GEN, "input_tokens": 0, "output_tokens": 0}}):
        line = await answered(processor, services, response(tool_usage=tool_usage))
        assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 9)
        assert line["image_generation_model"] is None
        assert line["image_generation_output_tokens"] == 0
        assert cost(line) == ANSWER_COST


async def test_the_image_model_the_request_named_prices_it_when_the_response_names_none(
    processor: Processor, services: Services
) -> None:
    body = {**BODY, "tools": [{**TOOL, "model": "gpt-image-1-mini"}]}
    line = await answered(processor, services, response(tools=[]), body)
    assert line["image_generation_model"] == "gpt-image-1-mini"
    # gpt-image-1-mini prices its image input at 2.50.
    expected = (40 * TEXT_IN + 9 * TEXT_OUT) + (
        30 * MINI_TEXT_IN + 20 * Decimal("2.50") + 1_056 * MINI_OUT
    )
    assert cost(line) == expected / 10**6


async def test_an_image_model_without_a_price_is_flagged_unpriced(
    processor: Processor, services: Services
) -> None:
    """Its pictures cost nothing and the line says the bill is short, as for a server
    tool without a price; the counts are still there for whoever prices them later."""
    tools = [{**TOOL, "model": "gpt-image-9"}]
    line = await answered(processor, services, response(tools=tools))
    assert line["image_generation_model"] == "gpt-image-9"
    assert line["image_generation_output_tokens"] == 1_056
    assert line["cost_priced"] is False
    assert cost(line) == ANSWER_COST


async def test_text_the_image_model_wrote_is_billed_at_its_output_price(
    processor: Processor, services: Services
) -> None:
    """An image model that reports the text and picture parts of its output apart
    (``output_tokens_details``): the text at its output price, the picture at its image
    output price; without details, all of the output is the picture."""
    details = {"text_tokens": 6, "image_tokens": 1_050}
    tool_usage = {"image_gen": {**IMAGE_GEN, "output_tokens_details": details}}
    tools = [{**TOOL, "model": "gpt-image-1-mini"}]
    line = await answered(processor, services, response(tool_usage=tool_usage, tools=tools))
    assert line["image_generation_output_image_tokens"] == 1_050
    expected = (40 * TEXT_IN + 9 * TEXT_OUT) + (
        30 * MINI_TEXT_IN + 20 * Decimal("2.50") + 6 * MINI_OUT + 1_050 * MINI_OUT
    )
    assert cost(line) == expected / 10**6


async def test_a_malformed_report_bills_no_more_than_it_counts(
    processor: Processor, services: Services
) -> None:
    """Parts larger than their counts are clamped; a report without its counts is none."""
    details = {"text_tokens": 0, "image_tokens": 500}
    clamped = {"input_tokens": 10, "input_tokens_details": details, "output_tokens": 7,
               "output_tokens_details": {"image_tokens": 99}}  # fmt: skip
    line = await answered(processor, services, response(tool_usage={"image_gen": clamped}))
    assert line["image_generation_input_image_tokens"] == 10
    assert line["image_generation_output_image_tokens"] == 7
    broken = {"image_gen": {"input_tokens": "many", "output_tokens": -1}}
    line = await answered(processor, services, response(tool_usage=broken))
    assert (line["prompt_tokens"], line["image_generation_input_tokens"]) == (40, 0)


# --- streams and the four ledgers --------------------------------------------------------------


@pytest.mark.parametrize("ending", ["completed", "failed", "cut"])
async def test_every_ledger_holds_the_picture_of_a_stream(store: StoreClient, ending: str) -> None:
    """A stream's terminal response carries ``tool_usage`` as the JSON answer does:
    ``response.completed``, or ``response.failed`` (the provider's count of what it did,
    billed). The log line, tokens_consumed_total and aigw_token_parts_total, the rollup
    and the quota (the tool's tokens count against it) agree. A stream cut before its
    terminal response never shows the picture's count: its picture, which the stream
    showed being drawn, is billed as the quota reserved it (the tool names no quality
    or size: a high-quality 1536x1024 picture's 6,240 tokens), at the image model's
    price, as a cut Images API stream's pictures are; before, it was free
    (docs/chargeback.md#image-generation)."""
    terminal = {
        "completed": typed("response.completed", {"response": response()}),
        "failed": typed("response.failed", {"response": response("failed")}),
        "cut": None,
    }[ending]
    recorded = await ledgers(
        store,
        RESPONSES,
        OPENAI_KEY,
        {**BODY, "stream": True},
        Answer(stream(terminal), SSE, ended=ending != "cut"),
    )
    recorded.agree()
    line = recorded.line
    if ending == "cut":
        assert line["usage_estimated"] is True
        assert line["image_generation_model"] == "gpt-image-1"
        assert line["image_generation_output_tokens"] == 6_240
        assert recorded.image_parts["image_generation_output_tokens"] == (6_240, 6_240)
        assert recorded.quota == line["total_tokens"]
        text = line["completion_tokens"] - 6_240
        answered = line["prompt_tokens"] * TEXT_IN + text * TEXT_OUT
        assert cost(line) == (answered + 6_240 * IMAGE_OUT) / 10**6
        return
    assert (line["prompt_tokens"], line["completion_tokens"]) == (90, 1_065)
    assert line["image_generation_output_tokens"] == 1_056
    assert recorded.image_parts["image_generation_output_tokens"] == (1_056, 1_056)
    assert recorded.quota == 90 + 1_065
    assert cost(line) == COST


# --- the price table ----------------------------------------------------------------------------


def test_the_long_context_threshold_is_judged_on_the_answering_models_prompt() -> None:
    """The tool's input is the image model's prompt, not the answering model's: a
    conversation of 150 tokens with a picture of 100 input tokens stays below a
    long-context threshold of 200, at the answering model's own price."""
    pricing = PricingConfig.model_validate(
        {
            "models": {
                "chat": {"input_per_million": 1, "output_per_million": 2,
                         "long_context": {"above_input_tokens": 200, "input_per_million": 10,
                                          "output_per_million": 20}},
                "gpt-image-1": {"input_per_million": 5, "output_per_million": 40},
            }
        }
    )  # fmt: skip
    drawn = ImageGeneration("gpt-image-1", 100, 0, 1_000, 1_000)
    usage = with_image_generation(Usage(150, 10, 160), drawn)
    cost = PriceTable(pricing).cost("chat", usage)
    assert cost.long_context is False
    assert cost.picousd == (150 * 1 + 10 * 2 + 100 * 5 + 1_000 * 40) * 10**6


# --- the rollups, the report and the management API ---------------------------------------------


async def test_the_image_counts_roll_up_and_reach_the_report_and_the_management_api(
    usage_store: UsageStore,
) -> None:
    """Summed per hour like every measure, and carried whole by the management API, so
    ``usage report --api`` prints what a report from the store prints."""
    drawn = (50, 20, 1_056, 1_056)
    for _ in range(2):
        await usage_store.record(
            UsageEntry(T0, DRAWN, 90, 1_065, prompt_image_tokens=3, image_generation=drawn)
        )
    by = ("model",)
    rows = await usage_store.query(DAY.start, DAY.end, by)
    [row] = rows
    counts = [getattr(row, name) for name in ("prompt_image_tokens", *IMAGE_GENERATION_COUNTS)]
    assert counts == [6, 100, 40, 2_112, 2_112]
    answer = pb.UsageReport.FromString(usage_report(rows, by, DAY).SerializeToString())
    assert answer.totals.image_generation_output_tokens == 2_112
    assert render(rows_from_report(answer), by, DAY, "json") == render(rows, by, DAY, "json")
    assert render(rows_from_report(answer), by, DAY, "csv") == render(rows, by, DAY, "csv")


# --- the reservation ----------------------------------------------------------------------------


async def test_a_hard_cap_leaves_room_for_the_tools_picture_beside_the_answer(
    quota_store: QuotaStore,
) -> None:
    """No ``max_output_tokens`` bounds the tool's picture, so the quota reserves one
    beside the answer's allowance, as the Images API reserves its pictures, and a cut
    stream is charged that reserve. Under a hard cap of 400 tokens a low-quality square
    picture (272) fits beside the prompt, the answer's allowance lowered to what is left;
    a high-quality one (6,240) is a 429 before the provider. Before, the cap saw the text
    alone: it let the high-quality picture through, and gave the answer the 200 tokens
    it asked for, the picture's room included."""
    low = {**BODY, "max_output_tokens": 200,
           "tools": [{**TOOL, "quality": "low", "size": "1024x1024"}]}  # fmt: skip
    admitted = await capped_request(quota_store, 400, RESPONSES, low)
    assert not admitted.HasField("immediate_response"), admitted.immediate_response.body
    # The body as it went upstream: as the client sent it when the cap changed nothing.
    sent = orjson.loads(admitted.request_body.response.body_mutation.body or orjson.dumps(low))
    assert 16 <= sent["max_output_tokens"] <= 400 - 272
    high = {**BODY, "tools": [{**TOOL, "quality": "high"}]}
    refused = await capped_request(quota_store, 400, RESPONSES, high)
    assert refused.immediate_response.status.code == 429
    # The picture is told as part of the room the answer needs, not as prompt tokens.
    message = orjson.loads(refused.immediate_response.body)["error"]["message"]
    assert f"the {6_240 + 16} tokens its answer needs at the least" in message
    error = orjson.loads(refused.immediate_response.body)["error"]
    assert error["type"] == "rate_limit_error"
