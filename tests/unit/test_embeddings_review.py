"""Review of the embeddings support, through the processor: what a client is charged for
an answer that came without the provider's count, what the OpenTelemetry metric calls an
embeddings call, and bodies that must be a 400 rather than a crash."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from google.protobuf.json_format import MessageToDict

from extproc.config import GatewayConfig
from extproc.headers import METADATA_NAMESPACE
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream, sample
from tests.unit.test_embeddings import AUTH, EMBEDDINGS, answer, call, embeddings, error_of

# 400 characters of input: the quota's estimate is 100 tokens.
TEXT = "word " * 80
ESTIMATE = 100
# text-embedding-3-small and titan-embed in the default config: $0.02 per million input tokens.
PRICE_PER_TOKEN = 0.02 / 1_000_000


def log_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


def span_fields(response: ext.ProcessingResponse) -> dict[str, Any]:
    """The metadata Envoy's span is tagged with, from the gateway's last answer."""
    found: dict[str, Any] = MessageToDict(
        response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
    )
    return found


@pytest.fixture
async def bedrock(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor with its Bedrock credentials loaded, as serving does."""
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


WITHOUT_USAGE = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
        "model": "text-embedding-3-small",
    }
)


@pytest.mark.parametrize(
    "reply",
    [WITHOUT_USAGE, b'{"object": "list", "data": [{"embedding": this is not json'],
    ids=["no usage", "not json"],
)
async def test_an_answer_without_the_providers_count_is_charged_its_input_everywhere(
    processor: Processor, services: Services, reply: bytes
) -> None:
    answers = await call(processor, embeddings(input=TEXT), reply)

    line = log_line(services)
    assert line["http_status_code"] == 200 and line["outcome"] == "completed"
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        ESTIMATE,
        0,
        ESTIMATE,
    )
    assert line["usage_reported"] is False and line["usage_estimated"] is True
    assert line["cost_usd"] == pytest.approx(ESTIMATE * PRICE_PER_TOKEN)
    assert sample(services, "tokens_consumed_total", token_type="prompt") == ESTIMATE
    span = span_fields(answers[-1])
    assert (span["prompt_tokens"], span["total_tokens"]) == (ESTIMATE, ESTIMATE)


async def test_a_titan_answer_without_its_token_count_is_charged_its_input(
    bedrock: Processor, services: Services
) -> None:
    titan = orjson.dumps({"embedding": [0.5, -0.25, 1.0]})
    await call(bedrock, embeddings(model="titan-embed", input=TEXT), titan)
    line = log_line(services)
    assert (line["prompt_tokens"], line["usage_estimated"]) == (ESTIMATE, True)


async def test_an_answer_the_gateway_could_not_read_as_titans_is_charged_nothing(
    bedrock: Processor, services: Services
) -> None:
    await call(bedrock, embeddings(model="titan-embed", input=TEXT), b'{"vectors": []}')
    line = log_line(services)
    assert line["http_status_code"] == 502
    assert line["total_tokens"] == 0 and line["usage_estimated"] is False
    assert line["cost_usd"] == 0


async def test_a_reported_count_is_still_what_is_charged(
    processor: Processor, services: Services
) -> None:
    await call(processor, embeddings(input=TEXT), answer(7))
    line = log_line(services)
    assert (line["prompt_tokens"], line["usage_reported"], line["usage_estimated"]) == (
        7,
        True,
        False,
    )


async def test_the_opentelemetry_metric_names_the_operation_embeddings_as_the_span_does(
    processor: Processor, services: Services
) -> None:
    answers = await call(processor, embeddings(input=["one", "two"]), answer(9, vectors=2))
    assert span_fields(answers[-1])["operation"] == "embeddings"
    histogram = "gen_ai_client_token_usage_sum"
    assert (
        sample(services, histogram, gen_ai_operation_name="embeddings", gen_ai_token_type="input")
        == 9
    )
    assert sample(services, histogram, gen_ai_operation_name="openai_embeddings") == 0


@pytest.mark.parametrize("value", [[], {}, ["base64"], {"format": "float"}])
async def test_an_encoding_format_that_is_no_string_is_a_400_naming_it(
    processor: Processor, services: Services, value: Any
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(encoding_format=value)),
        ],
    )
    status, error = error_of(answers[-1])
    assert status == 400 and error["param"] == "encoding_format"
    assert log_line(services)["http_status_code"] == 400


@pytest.mark.parametrize(
    ("model", "value", "code"),
    [
        ("titan-embed", ["one", "two"], "unsupported_input"),
        ("titan-embed", [[1, 2, 3]], "unsupported_input"),
        ("claude-3-5-haiku-latest", "one", "unsupported_model_for_route"),
    ],
)
async def test_a_request_its_provider_cannot_serve_is_refused_before_the_quota(
    processor: Processor, services: Services, model: str, value: Any, code: str
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(EMBEDDINGS, headers=AUTH),
            request_body(embeddings(model=model, input=value)),
        ],
    )
    # The refusal is the answer to the request body, before any translation or signing.
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == code
    line = log_line(services)
    assert line["http_status_code"] == 400 and line["total_tokens"] == 0
    # The quota never saw it: no request limit counted it.
    assert line["quota_decision"] is None


async def test_a_provider_reporting_only_its_total_is_charged_that_count(
    processor: Processor, services: Services
) -> None:
    """OpenAI-compatible embeddings services such as Voyage AI's answer `usage:
    {"total_tokens": N}` alone: N is what they bill, not the gateway's estimate."""
    reply = orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
            "model": "text-embedding-3-small",
            "usage": {"total_tokens": 7},
        }
    )
    await call(processor, embeddings(input=TEXT), reply)
    line = log_line(services)
    assert (line["prompt_tokens"], line["total_tokens"]) == (7, 7)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
