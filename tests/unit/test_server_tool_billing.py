"""Anthropic's server tool requests (web search) read on every path and billed per request.

Anthropic reports them in ``usage.server_tool_use`` (``web_search_requests``,
``web_fetch_requests``): JSON answers, a stream's ``message_start`` (0s) and
``message_delta`` (cumulative). The default config bills web searches at $10 per 1,000
and web fetches at nothing beyond their tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from extproc.chargeback.pricing import PriceTable, cost_of, token_prices
from extproc.config.pricing_model import ModelPrice, PricingConfig
from extproc.context import Usage
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import anthropic_anthropic, openai_anthropic
from extproc.translators.base import stream_failure

SONNET = "claude-sonnet-4-0"
# The default config's Sonnet prices, USD per million tokens, and a search's price.
INPUT, OUTPUT = Decimal("3.00"), Decimal("15.00")
PER_SEARCH = Decimal("0.01")
SEARCHED = {"web_search_requests": 3, "web_fetch_requests": 2}


def sse(payload: Mapping[str, object], name: str) -> bytes:
    return f"event: {name}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def message_start(**usage: object) -> bytes:
    counts = {"input_tokens": 40, "output_tokens": 1, **usage}
    message = {"id": "msg_1", "model": SONNET, "content": [], "usage": counts}
    return sse({"type": "message_start", "message": message}, "message_start")


def text(words: str) -> bytes:
    delta = {"type": "text_delta", "text": words}
    return sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")


def message_delta(**usage: object) -> bytes:
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    payload = {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 9, **usage}}
    return sse(payload, "message_delta")


OVERLOADED = sse(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
)
MESSAGE_STOP = sse({"type": "message_stop"}, "message_stop")
SEARCHING_STREAM = (
    message_start(server_tool_use={"web_search_requests": 0, "web_fetch_requests": 0})
    + text("The act now says")
    + message_delta(server_tool_use=SEARCHED)
    + MESSAGE_STOP
)


def answer(usage: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "The act now says"}]
    return orjson.dumps(
        {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
         "content": content, "stop_reason": "end_turn", "usage": usage}
    )  # fmt: skip


# --- Reading the counts -------------------------------------------------------------


def test_every_reader_counts_the_requests_of_each_server_tool() -> None:
    body = answer({"input_tokens": 40, "output_tokens": 9, "server_tool_use": SEARCHED})
    passthrough = anthropic_anthropic.MessageReader()
    passthrough.feed(body, True)
    translated = openai_anthropic.CompletionTranslator(request_id="r", created=0)
    translated.feed(body, True)
    streamed = anthropic_anthropic.EventStreamReader()
    streamed.feed(SEARCHING_STREAM, True)
    translated_stream = openai_anthropic.StreamTranslator(
        include_usage=True, request_id="r", created=0
    )
    translated_stream.feed(SEARCHING_STREAM, True)
    for reader in (passthrough, translated, streamed, translated_stream):
        assert reader.usage is not None
        assert reader.usage.server_tool_requests == {"web_search": 3, "web_fetch": 2}
        assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (40, 9)


def test_a_stream_cut_into_any_chunks_reads_the_same_counts() -> None:
    for cut in range(1, len(SEARCHING_STREAM)):
        reader = anthropic_anthropic.EventStreamReader()
        reader.feed(SEARCHING_STREAM[:cut], False)
        reader.feed(SEARCHING_STREAM[cut:], True)
        assert reader.usage is not None
        assert reader.usage.server_tool_requests == {"web_search": 3, "web_fetch": 2}


def test_the_openai_client_is_shown_its_usage_in_openai_s_shape_only() -> None:
    translator = openai_anthropic.StreamTranslator(include_usage=True, request_id="r", created=0)
    out = translator.feed(SEARCHING_STREAM, True)
    usage_chunks = [
        orjson.loads(line[6:])["usage"]
        for line in out.split(b"\n")
        if line.startswith(b"data: {") and b'"usage":{' in line
    ]
    assert usage_chunks == [
        {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49,
         "prompt_tokens_details": {"cached_tokens": 0}}
    ]  # fmt: skip


def test_searches_that_ran_nothing_are_not_counted() -> None:
    body = answer({"input_tokens": 40, "output_tokens": 9, "server_tool_use": {
        "web_search_requests": 0, "web_fetch_requests": 0}})  # fmt: skip
    reader = anthropic_anthropic.MessageReader()
    reader.feed(body, True)
    assert reader.usage is not None and reader.usage.server_tool_requests == {}


@pytest.mark.parametrize(
    "reported",
    [
        "many",
        ["web_search_requests"],
        {"web_search_requests": True},
        {"web_search_requests": -4},
        {"web_search_requests": "3"},
        {"web_search": 3},  # not a count of requests
        {"Web-Search_requests": 3},
        {"_requests": 3},
    ],
)
def test_a_malformed_report_bills_no_server_tool_and_still_bills_the_tokens(
    reported: object,
) -> None:
    reader = anthropic_anthropic.MessageReader()
    reader.feed(answer({"input_tokens": 40, "output_tokens": 9, "server_tool_use": reported}), True)
    assert reader.usage is not None
    assert reader.usage.server_tool_requests == {}
    assert reader.usage.total_tokens == 49


def test_a_report_naming_too_many_tools_is_cut_to_a_bounded_few() -> None:
    flood = {f"tool{n}_requests": 1 for n in range(500)}
    reader = anthropic_anthropic.MessageReader()
    reader.feed(answer({"input_tokens": 40, "output_tokens": 9, "server_tool_use": flood}), True)
    assert reader.usage is not None
    assert len(reader.usage.server_tool_requests) == anthropic_anthropic.MAX_SERVER_TOOLS


def test_a_stream_failed_after_reporting_searches_keeps_them() -> None:
    stream = message_start() + text("The act") + message_delta(server_tool_use=SEARCHED)
    stream += OVERLOADED
    for translator in (
        anthropic_anthropic.EventStreamReader(),
        openai_anthropic.StreamTranslator(include_usage=False, request_id="r", created=0),
    ):
        translator.feed(stream, True)
        failure = stream_failure(translator)
        assert failure is not None
        assert failure.server_tool_requests == {"web_search": 3, "web_fetch": 2}


# --- Pricing ------------------------------------------------------------------------


def sonnet(**tools: str) -> ModelPrice:
    prices = {name: Decimal(price) for name, price in tools.items()}
    return ModelPrice(
        input_per_million=INPUT, output_per_million=OUTPUT, server_tools_per_thousand=prices
    )


def searched(**tools: int) -> Usage:
    return Usage(1000, 100, 1100, server_tool_requests=dict(tools))


def test_each_search_costs_its_price_on_top_of_the_tokens() -> None:
    prices = token_prices(sonnet(), {"web_search": Decimal("10.00"), "web_fetch": Decimal(0)})
    cost = cost_of(searched(web_search=3, web_fetch=2), prices)
    assert cost.usd == (1000 * INPUT + 100 * OUTPUT) / 10**6 + 3 * PER_SEARCH
    assert cost.priced


def test_a_model_s_own_tool_price_overrides_the_table_s_tool_by_tool() -> None:
    table = {"web_search": Decimal("10.00"), "web_fetch": Decimal("1.00")}
    prices = token_prices(sonnet(web_search="12.50"), table)
    cost = cost_of(searched(web_search=2, web_fetch=1), prices)
    tokens = (1000 * INPUT + 100 * OUTPUT) / 10**6
    assert cost.usd == tokens + 2 * Decimal("0.0125") + Decimal("0.001")


def test_a_search_price_with_six_decimals_is_exact_over_a_million_searches() -> None:
    prices = token_prices(sonnet(web_search="0.000001"))
    one = cost_of(Usage(0, 0, 0, server_tool_requests={"web_search": 1}), prices)
    assert sum(one.picousd for _ in range(1_000_000)) == 10**9  # a thousandth of a dollar


def test_an_unpriced_tool_is_left_out_flagged_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pricing = PricingConfig(
        models={SONNET: sonnet()}, server_tools_per_thousand={"web_search": Decimal(10)}
    )
    table = PriceTable(pricing)
    with caplog.at_level(logging.WARNING, logger="extproc.chargeback.pricing"):
        costs = [table.cost(SONNET, searched(web_search=1, moon_probe=4)) for _ in range(3)]
    tokens = (1000 * INPUT + 100 * OUTPUT) / 10**6
    assert {(cost.usd, cost.priced) for cost in costs} == {(tokens + PER_SEARCH, False)}
    pricing = [r for r in caplog.records if r.name == "extproc.chargeback.pricing"]
    assert [record.getMessage().count("moon_probe") for record in pricing] == [1]
    # A request that used only priced tools is priced as usual.
    assert table.cost(SONNET, searched(web_search=1)).priced


def test_an_unpriced_model_stays_unpriced_whatever_its_tools() -> None:
    table = PriceTable(PricingConfig(server_tools_per_thousand={"web_search": Decimal(10)}))
    cost = table.cost("claude-unknown", searched(web_search=5))
    assert (cost.picousd, cost.priced) == (0, False)


@pytest.mark.parametrize(
    "tools",
    [
        {"web_search": "0.0000001"},  # a seventh decimal: not a whole picodollar count
        {"web_search": "-1"},
        {"Web Search": "10"},
        {"": "10"},
    ],
)
def test_a_price_table_with_a_bad_tool_price_is_refused(tools: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="server_tools_per_thousand"):
        PricingConfig.model_validate({"server_tools_per_thousand": tools})
    with pytest.raises(ValidationError, match="server_tools_per_thousand"):
        ModelPrice.model_validate(
            {"input_per_million": 1, "output_per_million": 1, "server_tools_per_thousand": tools}
        )


# --- Through the processor: the log line ------------------------------------------

MESSAGES_BODY = orjson.dumps(
    {"model": SONNET, "max_tokens": 100, "messages": [{"role": "user", "content": "x" * 40}]}
)
STREAM_BODY = orjson.dumps({**orjson.loads(MESSAGES_BODY), "stream": True})
KEY = {"x-api-key": "team1-key"}


def sse_headers() -> Any:
    return response_headers(200, {"content-type": "text/event-stream"})


async def test_the_log_line_counts_the_searches_and_costs_them(
    processor: Processor, services: Services
) -> None:
    usage = {"input_tokens": 40, "output_tokens": 9, "server_tool_use": SEARCHED}
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(MESSAGES_BODY),
            response_headers(200, {"content-type": "application/json"}),
            response_body(answer(usage)),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 2}
    assert Decimal(str(line["cost_usd"])) == (40 * INPUT + 9 * OUTPUT) / 10**6 + 3 * PER_SEARCH
    assert line["cost_priced"] is True


async def test_a_request_without_server_tools_logs_none(
    processor: Processor, services: Services
) -> None:
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(MESSAGES_BODY),
            response_headers(200, {"content-type": "application/json"}),
            response_body(answer({"input_tokens": 40, "output_tokens": 9})),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["server_tool_requests"] is None


async def test_a_stream_the_provider_failed_bills_the_searches_it_reported(
    processor: Processor, services: Services
) -> None:
    stream = message_start() + text("The act") + message_delta(server_tool_use=SEARCHED)
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(STREAM_BODY),
            sse_headers(),
            response_body(stream + OVERLOADED),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 2}
    tokens = line["prompt_tokens"] * INPUT + line["completion_tokens"] * OUTPUT
    assert Decimal(str(line["cost_usd"])) == tokens / 10**6 + 3 * PER_SEARCH


async def test_a_stream_the_client_left_after_the_report_bills_the_searches(
    processor: Processor, services: Services
) -> None:
    stream = message_start() + text("The act") + message_delta(server_tool_use=SEARCHED)
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(STREAM_BODY),
            sse_headers(),
            # The client hung up before message_stop.
            response_body(stream, end_of_stream=False),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["usage_reported"] is True
    assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 2}
