"""A review of the Bedrock Runtime route's newer operations (CountTokens, InvokeModel for
every model family), as an operator of the gateway meets them.

Each test plays one request through the processor (real ext_proc messages, the default
config's ``bedrock-converse`` route and mock Bedrock provider, AWS credentials loaded) and
reads the answer the client got or the log line the request wrote.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson

from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.bedrock_invoke import ModelStreamReader
from tests.unit.conftest import MemoryLog
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import DEFAULT_CONFIG, HARD_CAP
from tests.unit.test_bedrock_invoke_families import chunk
from tests.unit.test_bedrock_invoke_review import AUTH, log_line, signing_processor

LLAMA = "meta.llama3-8b-instruct-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA_VISION = "meta.llama3-2-11b-instruct-v1:0"
LLAMA_BODY = {"prompt": "Say hello to the gateway, please.", "max_gen_len": 300}
# A Nova call whose prompt ends at a cache point: Bedrock's input count is then its
# uncached part alone (as Converse's inputTokens is), the cache's reads and writes are
# counted apart.
NOVA = "amazon.nova-lite-v1:0"
NOVA_BODY = {
    "messages": [{"role": "user", "content": [{"text": "Long context"}, {"cachePoint": {}}]}],
    "inferenceConfig": {"maxTokens": 100},
}
# Bedrock's answer headers to a non-streamed InvokeModel call, as Envoy's router passes
# them on: the token counts Bedrock reports for every model.
TOKEN_HEADERS = {
    "content-type": "application/json",
    "x-envoy-upstream-service-time": "4",
    "x-amzn-bedrock-input-token-count": "12",
    "x-amzn-bedrock-output-token-count": "5",
}


def path(model: str, operation: str) -> str:
    return f"/model/{quote(model, safe='')}/{operation}"


def blob(value: Any) -> str:
    return base64.b64encode(orjson.dumps(value)).decode()


def immediate_status(answers: list[Any]) -> int | None:
    """The status of the gateway's own answer (a refusal), None when it let the request on."""
    for answer in answers:
        if answer.WhichOneof("response") == "immediate_response":
            return int(answer.immediate_response.status.code)
    return None


async def test_a_json_answer_cut_after_bedrocks_token_headers_is_billed_by_them(
    config: GatewayConfig, services: Services
) -> None:
    # Bedrock answered a Llama call with its counts in the headers; the client hung up
    # while Envoy buffered the body. Bedrock bills its counts: so must the gateway, not
    # the prompt estimate plus the whole max_gen_len it reserved.
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path(LLAMA, "invoke"), headers=AUTH),
                request_body(orjson.dumps(LLAMA_BODY)),
                response_headers(200, TOKEN_HEADERS),
            ],
        )

    line = log_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (12, 5)
    assert line["usage_reported"] is True and line["usage_estimated"] is False


async def test_a_count_whose_base64_is_not_ascii_is_a_400_not_a_crash(
    config: GatewayConfig, services: Services
) -> None:
    count = b'{"input": {"invokeModel": {"body": "\xc3\xa9t\xc3\xa9"}}}'
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor,
            [request_headers(path(HAIKU, "count-tokens"), headers=AUTH), request_body(count)],
        )

    assert immediate_status(answers) == 400
    assert log_line(services)["http_status_code"] == 400


async def test_a_count_for_claude_with_a_body_the_guards_cannot_read_is_refused(
    services: Services,
) -> None:
    # The same body sent to invoke is refused (Claude's body is a Messages call); counted,
    # its text would reach Bedrock past a guard that never read it.
    no_secret = {"name": "no-secret", "literals": ["hunter2"]}
    guarded = config_with(
        {"policies": [{"name": "secrets", "request": [no_secret]}]},
        {"bedrock-converse": {"guardrails": "secrets"}},
    )
    secret = {"prompt": "\n\nHuman: my password is hunter2\n\nAssistant:"}
    count = {"input": {"invokeModel": {"body": blob(secret)}}}
    async with signing_processor(guarded, services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers(path(HAIKU, "count-tokens"), headers=AUTH),
                request_body(orjson.dumps(count)),
            ],
        )

    status = immediate_status(answers)
    assert status is not None and 400 <= status < 500


async def test_an_images_base64_is_not_reserved_as_prompt_text(quota_store: QuotaStore) -> None:
    # A Llama 3.2 vision call with one 192 KB photo costs a few thousand tokens; read as
    # text, its 256,000 characters of base64 would reserve 64,000, past this 20,000-token
    # daily budget: a 429 for a call the budget affords.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    capped = parse_config(DEFAULT_CONFIG + HARD_CAP % 20_000, "t", {})
    photo = base64.b64encode(bytes(range(256)) * 750).decode()
    body = {"prompt": "Describe this photo.", "images": [photo], "max_gen_len": 200}
    async with signing_processor(capped, services) as processor:
        answers = await run_stream(
            processor,
            [
                request_headers(path(LLAMA_VISION, "invoke"), headers=AUTH),
                request_body(orjson.dumps(body)),
            ],
        )

    assert immediate_status(answers) is None  # sent on to Bedrock, not refused with a 429


async def test_a_json_answer_that_read_the_prompt_cache_bills_the_cached_tokens(
    config: GatewayConfig, services: Services
) -> None:
    cached = {
        **TOKEN_HEADERS,
        "x-amzn-bedrock-cache-read-input-token-count": "100",
        "x-amzn-bedrock-cache-write-input-token-count": "20",
    }
    async with signing_processor(config, services) as processor:
        await run_stream(
            processor,
            [
                request_headers(path(NOVA, "invoke"), headers=AUTH),
                request_body(orjson.dumps(NOVA_BODY)),
                response_headers(200, cached),
                response_body(b'{"output": {"message": {"content": [{"text": "hi"}]}}}'),
            ],
        )

    line = log_line(services)
    # The model read 132 prompt tokens: 12 uncached, 100 from the cache, 20 written to it.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (132, 5)
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (100, 20)


def test_a_stream_that_read_the_prompt_cache_bills_the_cached_tokens() -> None:
    metrics = {
        "inputTokenCount": 12,
        "outputTokenCount": 5,
        "cacheReadInputTokenCount": 100,
        "cacheWriteInputTokenCount": 20,
        "invocationLatency": 30,
        "firstByteLatency": 10,
    }
    last = {"messageStop": {"stopReason": "end_turn"}, "amazon-bedrock-invocationMetrics": metrics}
    reader = ModelStreamReader()
    reader.feed(chunk(last), True)

    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (132, 5)
    assert (reader.usage.cached_tokens, reader.usage.cache_write_tokens) == (100, 20)
