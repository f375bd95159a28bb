"""A review of Anthropic Messages clients reaching Claude on Bedrock, as the ``anthropic``
SDK and Claude Code see it: what the gateway sends Bedrock (and whether Bedrock takes it),
how a stream the provider breaks off ends for the client, which Bedrock model ids reach
InvokeModel at all, and the tier a request is billed at.

The processor tests play one request through the gateway (real ext_proc messages, the
default config's ``anthropic-messages`` route and mock Bedrock provider, its SigV4
credentials loaded) and read what the client or the provider gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.mock_llm.bedrock_anthropic import parse_claude_request
from extproc.mock_llm.bedrock_embeddings import MalformedInputError
from extproc.mock_llm.recorder import Body
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.anthropic_bedrock import (
    MessageReader,
    StreamTranslator,
    may_run_claude,
    translate_request,
)
from extproc.translators.base import stream_failure
from tests.unit.conftest import MemoryLog
from tests.unit.test_anthropic_bedrock import chunk, sse_events

API_KEY = {"x-api-key": "team1-key"}
PROMPT = [{"role": "user", "content": "Say hello."}]
# What Envoy's router adds to an answer that came from the provider.
FROM_PROVIDER = {"x-envoy-upstream-service-time": "4"}
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream", **FROM_PROVIDER}
# An application inference profile: the ARN a company makes to track Claude's costs, which
# names no model (Bedrock knows which one it copies).
APP_PROFILE = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"

EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "msg_bdrk_1", "type": "message",
     "role": "assistant", "model": "claude-3-haiku-20240307", "content": [],
     "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 12, "outputTokenCount": 2, "invocationLatency": 40,
        "firstByteLatency": 20}},
]  # fmt: skip


def config_with_models(*models: dict[str, Any]) -> GatewayConfig:
    """The default config with more models."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["models"].extend(models)
    return parse_config(yaml.safe_dump(raw), "test", {})


def config_with_tier_price(model: str, tier: str, price: dict[str, float]) -> GatewayConfig:
    """The default config with a price for one of ``model``'s service tiers."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["pricing"]["models"][model]["service_tiers"] = {tier: price}
    return parse_config(yaml.safe_dump(raw), "test", {})


@pytest.fixture
def access_log() -> MemoryLog:
    return MemoryLog()


async def signing(config: GatewayConfig, access_log: MemoryLog) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, Services(metrics=GatewayMetrics(), access_log=access_log))
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


@pytest.fixture
async def processor(config: GatewayConfig, access_log: MemoryLog) -> AsyncIterator[Processor]:
    async for each in signing(config, access_log):
        yield each


def headers_sent_upstream(answer: ext.ProcessingResponse) -> dict[str, str]:
    """The headers the gateway set on the request to the provider (its path among them)."""
    mutation = answer.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


# --- Anthropic's service_tier: the SDK's own parameter, not in Bedrock's schema ---------------


@pytest.mark.parametrize("tier", ["auto", "standard_only"])
def test_anthropics_service_tier_is_not_sent_to_bedrock(tier: str) -> None:
    # client.messages.create(..., service_tier="auto"): Anthropic's choice between its
    # priority and standard capacity. Bedrock picks tiers in its own header and refuses
    # the key in the body; either value is served by Bedrock's standard tier.
    body = {"model": "haiku", "max_tokens": 50, "messages": PROMPT, "service_tier": tier}
    sent = translate_request(body, None)

    assert "service_tier" not in sent
    parse_claude_request("claude-3-haiku-20240307", Body(orjson.dumps(sent), True, sent))
    assert body["service_tier"] == tier  # the client's body is left as it came


def test_the_mock_refuses_service_tier_in_the_body_as_bedrock_does() -> None:
    doc = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": PROMPT,
           "service_tier": "auto"}  # fmt: skip
    with pytest.raises(MalformedInputError, match=r"extraneous key \[service_tier\]"):
        parse_claude_request("claude-3-haiku-20240307", Body(orjson.dumps(doc), True, doc))


# --- A stream Bedrock ends before Claude's message_stop -------------------------------------


def test_a_stream_that_ends_before_message_stop_ends_with_an_error_event() -> None:
    # Bedrock's body ended after the text began (a frame cut short, a proxy that closed
    # the response): the client must not take the half answer (a tool call's input cut
    # in two) for a whole one.
    translator = StreamTranslator()
    out = b"".join(translator.feed(chunk(event), False) for event in EVENTS[:4])
    out += translator.feed(chunk(EVENTS[4])[:9], True)

    name, data = sse_events(out)[-1]
    assert name == "error"
    assert data["error"]["type"] == "api_error"
    failure = stream_failure(translator)
    assert failure is not None and failure.prompt_tokens == 12
    assert translator.usage is None


def test_a_whole_stream_gets_nothing_at_its_end() -> None:
    translator = StreamTranslator()
    out = b"".join(translator.feed(chunk(event), False) for event in EVENTS)
    out += translator.feed(b"", True)

    assert [name for name, _ in sse_events(out)] == [event["type"] for event in EVENTS]
    assert stream_failure(translator) is None
    assert translator.usage is not None and translator.usage.completion_tokens == 2


async def test_a_stream_cut_short_is_logged_as_the_providers_failure_and_charged(
    processor: Processor, access_log: MemoryLog
) -> None:
    body = orjson.dumps({"model": "haiku", "max_tokens": 50, "stream": True, "messages": PROMPT})
    chunks = [chunk(event) for event in EVENTS[:4]]
    messages = [
        request_headers("/v1/messages", headers=API_KEY),
        request_body(body),
        response_headers(200, EVENT_STREAM),
        *(response_body(part, end_of_stream=False) for part in chunks),
        response_body(b"", end_of_stream=True),
    ]
    answers = await run_stream(processor, messages)

    received = client_body([*chunks, b""], answers[3:])
    name, data = sse_events(received)[-1]
    assert name == "error"
    assert data["error"]["message"] == "the provider's stream ended before it was complete"
    [line] = access_log.lines()
    # As every translation logs a cut stream (before: api_error, read back from the
    # gateway's own error event).
    assert (line["error_type"], line["error_code"]) == (
        "upstream_error",
        "invalid_upstream_response",
    )
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 3)  # "Hello there"


# --- Claude behind an ARN that names no model -----------------------------------------------


@pytest.mark.parametrize(
    "model_id",
    [
        APP_PROFILE,
        "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdef123456",
        "arn:aws:bedrock:us-east-1:123456789012:default-prompt-router/anthropic.claude:1",
    ],
    ids=["application-profile", "provisioned", "prompt-router"],
)
def test_an_arn_that_hides_its_model_may_run_claude(model_id: str) -> None:
    assert may_run_claude(model_id)


@pytest.mark.parametrize(
    ("model_id", "claude"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", True),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
        ("arn:aws:bedrock:eu-west-1:1:inference-profile/eu.anthropic.claude-3-haiku-v1:0", True),
        ("amazon.titan-text-express-v1", False),
        ("arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0", False),
    ],
)
def test_a_model_id_that_names_its_model_says_whether_it_is_claude(
    model_id: str, claude: bool
) -> None:
    assert may_run_claude(model_id) is claude


async def test_claude_behind_an_application_inference_profile_is_invoked(
    access_log: MemoryLog,
) -> None:
    # The Claude Code setup AWS recommends for cost tracking: the company's application
    # inference profile, named by its ARN, as the model's upstream.
    config = config_with_models(
        {"name": "team-sonnet", "provider": "mock-bedrock", "upstream_model": APP_PROFILE}
    )
    body = orjson.dumps({"model": "team-sonnet", "max_tokens": 50, "messages": PROMPT})
    async for processor in signing(config, access_log):
        answers = await run_stream(
            processor, [request_headers("/v1/messages", headers=API_KEY), request_body(body)]
        )
    assert not answers[-1].HasField("immediate_response"), "refused before Bedrock"
    headers = headers_sent_upstream(answers[1])
    assert unquote(headers[":path"]) == f"/model/{APP_PROFILE}/invoke"


# --- The tier Bedrock served, named in InvokeModel's answer header ---------------------------

# Flex's price for the default config's haiku, half its own (USD per million tokens).
FLEX = {"input_per_million": 0.125, "output_per_million": 0.625}
MESSAGE = {"id": "msg_bdrk_1", "type": "message", "role": "assistant",
           "model": "claude-3-haiku-20240307", "content": [{"type": "text", "text": "Hello"}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 1000, "output_tokens": 1000}}  # fmt: skip


def test_a_stream_is_priced_at_the_tier_bedrocks_header_names() -> None:
    translator = StreamTranslator(served_tier="flex")
    for event in EVENTS:
        translator.feed(chunk(event), False)
    assert translator.service_tier == "flex"


def test_a_stream_cut_before_its_usage_keeps_the_tier_bedrock_named() -> None:
    translator = StreamTranslator(served_tier="priority")
    translator.feed(chunk(EVENTS[0]), False)
    assert translator.service_tier == "priority"


def test_a_message_is_priced_at_the_tier_bedrocks_header_names() -> None:
    reader = MessageReader(served_tier="flex")
    reader.feed(orjson.dumps(MESSAGE), True)
    assert reader.service_tier == "flex"
    assert reader.usage is not None and reader.usage.completion_tokens == 1000
    assert MessageReader().feed(orjson.dumps(MESSAGE), True) is None  # passed through


async def test_a_message_bedrock_served_at_flex_is_billed_at_flex(access_log: MemoryLog) -> None:
    # The anthropic SDK with extra_headers={"X-Amzn-Bedrock-Service-Tier": "flex"} (Claude
    # Code: ANTHROPIC_CUSTOM_HEADERS): the gateway passes the header on, Bedrock serves the
    # request at flex and says so in the same header of its answer.
    config = config_with_tier_price("anthropic.claude-3-haiku-20240307-v1:0", "flex", FLEX)
    tier = {"x-amzn-bedrock-service-tier": "flex"}
    body = orjson.dumps({"model": "haiku", "max_tokens": 1000, "messages": PROMPT})
    async for processor in signing(config, access_log):
        await run_stream(
            processor,
            [
                request_headers("/v1/messages", headers={**API_KEY, **tier}),
                request_body(body),
                response_headers(200, {**FROM_PROVIDER, **tier}),
                response_body(orjson.dumps(MESSAGE)),
            ],
        )
    [line] = access_log.lines()
    assert line["service_tier"] == "flex"
    assert line["cost_usd"] == pytest.approx((0.125 + 0.625) / 1000)
