"""Anthropic's count_tokens for Claude on Bedrock: the CountTokens call the gateway makes of
a count body, and Bedrock's ``{"inputTokens": N}`` as the ``{"input_tokens": N}`` an
Anthropic client reads."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from extproc.translators import anthropic_bedrock
from extproc.translators.anthropic_bedrock_count import (
    CountTranslator,
    request_path,
    translate_request,
)

PROMPT: list[dict[str, Any]] = [{"role": "user", "content": "How many tokens is this?"}]
WEATHER = {"name": "get_weather", "input_schema": {"type": "object"}}


def invoke_body(count_body: dict[str, Any]) -> dict[str, Any]:
    """The InvokeModel body a CountTokens body carries, as Bedrock decodes it."""
    assert list(count_body) == ["input"] and list(count_body["input"]) == ["invokeModel"]
    encoded = count_body["input"]["invokeModel"]["body"]
    assert isinstance(encoded, str)
    decoded: dict[str, Any] = orjson.loads(base64.b64decode(encoded, validate=True))
    return decoded


def read(translator: CountTranslator, *chunks: bytes) -> bytes:
    """What the client gets for a provider's answer sent in ``chunks``."""
    out = [translator.feed(part, False) or b"" for part in chunks[:-1]]
    last = translator.feed(chunks[-1], True)
    assert last is not None
    return b"".join(out) + last


def test_the_count_carries_the_body_a_messages_call_would_invoke_claude_with() -> None:
    client_body = {"model": "haiku", "messages": PROMPT, "system": "Be brief.", "tools": [WEATHER]}
    sent = invoke_body(translate_request(client_body, "a-1, b-2", ["a-1"]))
    expected = anthropic_bedrock.translate_request(client_body, "a-1, b-2", ["a-1"])
    # The same body as the Messages call's, plus the max_tokens CountTokens insists on.
    assert sent == {**expected, "max_tokens": sent["max_tokens"]}
    assert sent["anthropic_version"] == "bedrock-2023-05-31"
    assert sent["anthropic_beta"] == ["a-1"]
    assert "model" not in sent and "stream" not in sent
    assert sent["tools"] == [WEATHER]
    assert client_body["model"] == "haiku" and "max_tokens" not in client_body


def test_a_max_tokens_is_set_only_when_the_body_has_none() -> None:
    assert invoke_body(translate_request({"messages": PROMPT}, None))["max_tokens"] >= 1
    named = {"messages": PROMPT, "max_tokens": 77}
    assert invoke_body(translate_request(named, None))["max_tokens"] == 77


def test_extended_thinking_gets_a_max_tokens_above_its_budget() -> None:
    # Claude refuses a body whose max_tokens is not above thinking.budget_tokens.
    thinking = {"type": "enabled", "budget_tokens": 2048}
    sent = invoke_body(translate_request({"messages": PROMPT, "thinking": thinking}, None))
    assert sent["max_tokens"] > 2048


def test_the_path_is_count_tokens_under_the_model_id_encoded_as_for_invoke() -> None:
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    assert request_path(model) == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/count-tokens"
    arn = "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x-v1:0"
    path = request_path(arn)
    assert path.count("/") == 3 and "%2F" in path
    assert unquote(path) == f"/model/{arn}/count-tokens"


def test_bedrocks_count_becomes_anthropics() -> None:
    translator = CountTranslator()
    assert read(translator, b'{"inputTo', b'kens": 42}') == b'{"input_tokens":42}'
    # A count is not usage: nothing to bill, nothing consumed.
    assert translator.usage is None and translator.status is None
    assert translator.response_model is None


@pytest.mark.parametrize(
    "answer",
    [b"", b"not json", b"[]", b"{}", b'{"inputTokens": "12"}', b'{"inputTokens": -1}',
     b'{"inputTokens": true}', b'{"inputTokens": 1.5}'],
)  # fmt: skip
def test_an_unreadable_count_is_anthropics_api_error(answer: bytes) -> None:
    translator = CountTranslator()
    error = orjson.loads(read(translator, answer))
    assert translator.status == 502 and translator.usage is None
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert "token count" in error["error"]["message"]


COUNT = "/v1/messages/count_tokens"
VERTEX_COUNT = (
    "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
)
HEADERS = {"authorization": "Bearer team1-key", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def processor(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor, its Bedrock signer started as the server starts it."""
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


async def count(processor: Processor, path: str, body: dict[str, Any]) -> ext.ProcessingResponse:
    """The gateway's answer to a count of ``body`` for Claude on Bedrock (``haiku``)."""
    raw = json.dumps({"model": "haiku", "messages": PROMPT, **body}).encode()
    answers = await run_stream(
        processor, [request_headers(path, headers=HEADERS), request_body(raw)]
    )
    return answers[-1]


@pytest.mark.parametrize("path", [COUNT, VERTEX_COUNT])
@pytest.mark.parametrize("budget", [2**64 - 1, 2**63, 2**31], ids=str)
async def test_a_thinking_budget_no_max_tokens_can_top_is_anthropics_400(
    processor: Processor, services: Services, path: str, budget: int
) -> None:
    # The count sets max_tokens one above the budget: 2**64 is no integer JSON writes,
    # and the client got a 500.
    answer = await count(
        processor, path, {"thinking": {"type": "enabled", "budget_tokens": budget}}
    )
    refusal = answer.immediate_response
    assert refusal.status.code == 400
    error = orjson.loads(refusal.body)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "thinking.budget_tokens" in error["error"]["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["http_status_code"] == 400


async def test_the_largest_budget_a_count_reads_goes_on_with_max_tokens_above_it(
    processor: Processor,
) -> None:
    budget = 2**31 - 1
    answer = await count(
        processor, COUNT, {"thinking": {"type": "enabled", "budget_tokens": budget}}
    )
    sent = orjson.loads(answer.request_body.response.body_mutation.body)
    assert invoke_body(sent)["max_tokens"] == budget + 1


# What else an Anthropic body may hold in a number (Bedrock refuses what Claude does not
# take, in Anthropic's shape): huge, negative, fractional, of another type.
ODD_NUMBERS = [2**64 - 1, -(2**63), 2**64, 1e308, -1.5, 0, "5", True, None, [], {}]


@pytest.mark.parametrize("field", ["max_tokens", "temperature", "top_k", "top_p", "thinking"])
@pytest.mark.parametrize("value", ODD_NUMBERS, ids=repr)
async def test_odd_numbers_elsewhere_in_a_count_go_on_or_are_a_4xx(
    processor: Processor, services: Services, field: str, value: Any
) -> None:
    answer = await count(processor, COUNT, {field: value})
    if answer.HasField("immediate_response"):
        assert 400 <= answer.immediate_response.status.code < 500, answer
        assert orjson.loads(answer.immediate_response.body)["type"] == "error"
    else:
        invoke_body(orjson.loads(answer.request_body.response.body_mutation.body))
    assert len(services.access_log.lines()) == 1  # type: ignore[attr-defined]
