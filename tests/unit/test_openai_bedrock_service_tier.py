"""Bedrock service tiers for OpenAI clients: the tier asked for reaches Converse, the tier
Bedrock reports serving at prices the request and is shown as OpenAI shows it.

An OpenAI client sends ``service_tier: "flex"`` to save half the price of its batch work;
on a Bedrock route the gateway must ask Converse for ``serviceTier: {"type": "flex"}``, read
the tier Bedrock answers with (``serviceTier.type`` of a Converse answer, of a ConverseStream
``metadata`` event) and price the request at that tier's entry. The mock Bedrock answers
the tier asked for, as Bedrock does, for boto3 to read.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from extproc.chargeback.pricing import PriceTable
from extproc.config.pricing_model import PricingConfig
from extproc.context import Usage
from extproc.errors import BadRequestError
from extproc.translators.base import reported_service_tier
from extproc.translators.openai_bedrock import (
    CompletionTranslator,
    StreamTranslator,
    asked_service_tier,
    translate_request,
)
from tests.unit.test_mock_llm_bedrock import (
    MESSAGES,
    bedrock,
    converse,
    converse_path,
    converse_stream,
    signed_post,
)
from tests.unit.test_openai_bedrock import data_lines, event_stream

MODEL = "amazon.nova-micro-v1:0"
QUESTION = [{"role": "user", "content": "Summarise these 40 tickets"}]
ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Done."}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 12, "outputTokens": 2, "totalTokens": 14},
    "metrics": {"latencyMs": 80},
}
STREAM_EVENTS: list[dict[str, Any]] = [
    {"event": "messageStart", "payload": {"role": "assistant"}},
    {"event": "contentBlockDelta", "payload": {"contentBlockIndex": 0, "delta": {"text": "Done."}}},
    {"event": "contentBlockStop", "payload": {"contentBlockIndex": 0}},
    {"event": "messageStop", "payload": {"stopReason": "end_turn"}},
]
USAGE = {"inputTokens": 12, "outputTokens": 2, "totalTokens": 14}


def converse_body(service_tier: Any = None, *, present: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": QUESTION}
    if present:
        body["service_tier"] = service_tier
    return translate_request(body, model_id=MODEL)


def answer_with(tier: Any) -> bytes:
    return orjson.dumps({**ANSWER, "serviceTier": {"type": tier}})


def metadata(tier: Any = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"usage": USAGE, "metrics": {"latencyMs": 80}}
    if tier is not None:
        payload["serviceTier"] = {"type": tier}
    return {"event": "metadata", "payload": payload}


def stream_translator(*, include_usage: bool, asked_tier: str | None = None) -> StreamTranslator:
    return StreamTranslator(
        model=MODEL, include_usage=include_usage, request_id="r", created=1, asked_tier=asked_tier
    )


def chunks(sse: bytes) -> list[dict[str, Any]]:
    return [line for line in data_lines(sse) if line != "[DONE]"]


# --- the tier asked for --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "sent"),
    [
        ("flex", "flex"),
        ("priority", "priority"),
        ("default", "default"),
        # OpenAI serves "fast" as priority processing; Bedrock's is "priority".
        ("fast", "priority"),
        # Bedrock's own name for reserved capacity, for clients that know their route.
        ("reserved", "reserved"),
    ],
)
def test_a_tier_bedrock_has_is_asked_of_converse(asked: str, sent: str) -> None:
    assert converse_body(asked)["serviceTier"] == {"type": sent}


@pytest.mark.parametrize("asked", ["auto", None])
def test_auto_or_no_tier_lets_bedrock_choose(asked: str | None) -> None:
    assert "serviceTier" not in converse_body(asked)
    assert "serviceTier" not in converse_body(present=False)


@pytest.mark.parametrize("asked", ["scale", "standard_only", "FLEX", "", 3, {"type": "flex"}])
def test_a_tier_bedrock_does_not_have_is_refused_naming_service_tier(asked: Any) -> None:
    # Served at another tier than asked, the request would be billed at a price the
    # client did not choose: it is told, and can ask again without it.
    with pytest.raises(BadRequestError) as refused:
        converse_body(asked)
    assert refused.value.status == 400
    assert refused.value.param == "service_tier"
    assert "flex" in refused.value.message


def test_a_long_refused_tier_is_not_echoed_whole() -> None:
    with pytest.raises(BadRequestError) as refused:
        converse_body("x" * 10_000)
    assert len(refused.value.message) < 300


# --- the tier served, whole answers --------------------------------------------------------


@pytest.mark.parametrize("tier", ["flex", "priority", "default"])
def test_a_converse_answer_names_the_tier_that_served_it(tier: str) -> None:
    translator = CompletionTranslator(model=MODEL, request_id="r", created=1)
    answer = translator.feed(answer_with(tier), True)
    assert answer is not None
    assert orjson.loads(answer)["service_tier"] == tier
    assert reported_service_tier(translator) == tier


def test_reserved_capacity_is_priced_as_reserved_but_not_shown() -> None:
    # OpenAI has no name for it: clients that decode the field as an enum would fail.
    translator = CompletionTranslator(model=MODEL, request_id="r", created=1)
    answer = translator.feed(answer_with("reserved"), True)
    assert answer is not None
    assert "service_tier" not in orjson.loads(answer)
    assert reported_service_tier(translator) == "reserved"


@pytest.mark.parametrize("tier", [None, 7, "Flex Tier!", ""])
def test_an_answer_without_a_readable_tier_names_none(tier: Any) -> None:
    body = orjson.dumps(ANSWER) if tier is None else answer_with(tier)
    translator = CompletionTranslator(model=MODEL, request_id="r", created=1)
    answer = translator.feed(body, True)
    assert answer is not None
    assert "service_tier" not in orjson.loads(answer)
    assert reported_service_tier(translator) is None


def test_a_flex_answer_is_priced_at_the_flex_price() -> None:
    translator = CompletionTranslator(model=MODEL, request_id="r", created=1)
    translator.feed(answer_with("flex"), True)
    pricing = PricingConfig.model_validate(
        {
            "models": {
                MODEL: {
                    "input_per_million": "0.035",
                    "output_per_million": "0.14",
                    "service_tiers": {
                        "flex": {"input_per_million": "0.0175", "output_per_million": "0.07"}
                    },
                }
            }
        }
    )
    usage = translator.usage
    assert usage == Usage(12, 2, 14)
    cost = PriceTable(pricing).cost(MODEL, usage, reported_service_tier(translator))
    # 12 * 0.0175 + 2 * 0.07 USD per million: half the standard price.
    assert cost.picousd == int((12 * Decimal("0.0175") + 2 * Decimal("0.07")) * 10**6)


# --- the tier served, streams --------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_shows_the_tier_its_metadata_names(include_usage: bool) -> None:
    translator = stream_translator(include_usage=include_usage)
    sse = translator.feed(event_stream([*STREAM_EVENTS, metadata("flex")]), True)
    shown = chunks(sse)
    assert reported_service_tier(translator) == "flex"
    # Bedrock names the tier last: the finish chunk (and the usage chunk) show it, as
    # OpenAI shows it on its chunks; the text went before the tier was known.
    finish = next(c for c in shown if c["choices"] and c["choices"][0]["finish_reason"])
    assert finish["service_tier"] == "flex"
    assert finish["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert shown[-1]["choices"] == [] and shown[-1]["service_tier"] == "flex"
        assert shown[-1]["usage"]["total_tokens"] == 14
    assert data_lines(sse)[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in shown if c["choices"]) == (
        "Done."
    )


def test_a_stream_in_pieces_reads_the_same_tier() -> None:
    stream = event_stream([*STREAM_EVENTS, metadata("priority")])
    whole = stream_translator(include_usage=False).feed(stream, True)
    translator = stream_translator(include_usage=False)
    pieces = b"".join(
        translator.feed(stream[start : start + 7], start + 7 >= len(stream))
        for start in range(0, len(stream), 7)
    )
    assert pieces == whole
    assert reported_service_tier(translator) == "priority"


def test_a_stream_without_a_tier_shows_none() -> None:
    translator = stream_translator(include_usage=True)
    shown = chunks(translator.feed(event_stream([*STREAM_EVENTS, metadata()]), True))
    assert all("service_tier" not in c for c in shown)
    assert reported_service_tier(translator) is None


def test_a_stream_cut_before_its_metadata_names_no_tier() -> None:
    # The client left (or the upstream reset) after messageStop: Bedrock had not named
    # the tier yet, so the request is priced at the model's own price.
    translator = stream_translator(include_usage=False)
    translator.feed(event_stream(STREAM_EVENTS), False)
    assert reported_service_tier(translator) is None
    assert translator.usage is None


@pytest.mark.parametrize(
    ("asked", "priced_at"),
    [
        pytest.param("flex", "flex", id="flex"),
        pytest.param("priority", "priority", id="priority"),
        pytest.param("default", "default", id="default"),
        # Past the reserved capacity Bedrock serves at its standard tier: only metadata
        # says which, so a cut stream is priced at the model's own price.
        pytest.param("reserved", None, id="reserved"),
        pytest.param(None, None, id="none-asked"),
    ],
)
def test_a_stream_cut_before_its_metadata_is_priced_at_the_tier_it_asked_for(
    asked: str | None, priced_at: str | None
) -> None:
    # Bedrock serves flex and priority as asked once it accepts the request (a model or
    # region without the tier is refused before the stream starts), so a flex stream the
    # client left is billed at the flex price, not at twice it.
    translator = stream_translator(include_usage=False, asked_tier=asked)
    sse = translator.feed(event_stream(STREAM_EVENTS), False)
    assert reported_service_tier(translator) == priced_at
    # What the client was shown does not change: Bedrock had not named the tier yet.
    assert all("service_tier" not in c for c in chunks(sse))


def test_a_stream_failed_before_its_metadata_is_priced_at_the_tier_it_asked_for() -> None:
    failed = [*STREAM_EVENTS[:2], {"exception": "throttlingException", "payload": {"message": "x"}}]
    translator = stream_translator(include_usage=False, asked_tier="flex")
    translator.feed(event_stream(failed), True)
    assert translator.failure is not None
    assert reported_service_tier(translator) == "flex"


@pytest.mark.parametrize(("named", "priced_at"), [("priority", "priority"), (None, None)])
def test_the_tier_metadata_names_outranks_the_tier_asked_for(
    named: str | None, priced_at: str | None
) -> None:
    # Bedrock's own word, once it comes, prices the stream, as it always did.
    translator = stream_translator(include_usage=False, asked_tier="flex")
    translator.feed(event_stream([*STREAM_EVENTS, metadata(named)]), True)
    assert reported_service_tier(translator) == priced_at


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        ({"service_tier": "flex"}, "flex"),
        ({"service_tier": "fast"}, "priority"),
        ({"service_tier": "reserved"}, "reserved"),
        ({"service_tier": "auto"}, None),
        ({}, None),
        # Refused when the request was translated: never reaches a stream, and never raises.
        ({"service_tier": "scale"}, None),
        ({"service_tier": 3}, None),
        (None, None),
    ],
)
def test_the_tier_a_request_asked_converse_for(body: Any, asked: str | None) -> None:
    assert asked_service_tier(body) == asked


def test_a_stream_cut_after_its_metadata_keeps_its_tier() -> None:
    translator = stream_translator(include_usage=False)
    translator.feed(event_stream([*STREAM_EVENTS, metadata("flex")]), False)
    assert reported_service_tier(translator) == "flex"


def test_a_stream_that_ends_without_metadata_still_finishes() -> None:
    translator = stream_translator(include_usage=False)
    lines = data_lines(translator.feed(event_stream(STREAM_EVENTS), True))
    assert lines[-2]["choices"][0]["finish_reason"] == "stop"
    assert "service_tier" not in lines[-2]
    assert lines[-1] == "[DONE]"


# --- the mock answers the tier asked for ---------------------------------------------------


async def test_the_mock_answers_the_tier_asked_for(mock_url: str) -> None:
    client = bedrock(mock_url)
    whole = await converse(client, serviceTier={"type": "flex"})
    assert whole["serviceTier"] == {"type": "flex"}
    events = await converse_stream(client, serviceTier={"type": "priority"})
    assert events[-1]["metadata"]["serviceTier"] == {"type": "priority"}
    # Asked for none, it names none.
    assert "serviceTier" not in await converse(client)
    assert "serviceTier" not in (await converse_stream(client))[-1]["metadata"]


async def test_the_mock_refuses_a_tier_bedrock_does_not_have(http: httpx.AsyncClient) -> None:
    doc = {"messages": MESSAGES, "serviceTier": {"type": "scale"}}
    response = await signed_post(http, converse_path(), doc)
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException")
    assert "serviceTier.type" in response.json()["message"]
