"""OpenAI embeddings on Google Cloud Vertex AI: the official ``openai`` client, through real
Envoy and the gateway, to the mock's Vertex AI, which takes only the access tokens it
issued for the stack's service account key and answers ``:predict`` in Vertex's format.
The vectors, the answer's usage, the log line and ``tokens_consumed_total`` must agree on
Vertex's token counts."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from extproc.mock_llm.embeddings_api import embedding_vector, text_key
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.mock_vertex import LOCATION, stack_serving, vertex_config, vertex_requests
from tests.integration.test_vertex import chat

TEXT_EMBEDDING = "text-embedding-005"
# USD per million input tokens (text-embedding-005's list price is per character; any
# price makes the cost say something).
PRICE = {"input_per_million": 0.10, "output_per_million": 0.0}


def embeddings_config() -> dict[str, Any]:
    models = {"vertex-embed": TEXT_EMBEDDING, "gemini-embed": "gemini-embedding-001"}
    return vertex_config(models, {"vertex-embed": PRICE})


stack = stack_serving(embeddings_config, "vertex-embeddings")


def prompt_tokens(samples: dict[str, Any]) -> float:
    return metric(
        samples,
        "tokens_consumed_total",
        model="vertex-embed",
        provider="vertex",
        token_type="prompt",
    )


def test_a_batch_is_embedded_on_vertex_and_billed_by_vertexs_counts(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    texts = ["Hello Vertex, embed me.", "A second text, somewhat longer than the first."]
    before = scrape(stack.metrics_url)

    # The SDK asks for base64 and decodes it: the gateway encoded Vertex's floats.
    raw = chat(stack).embeddings.with_raw_response.create(
        model="vertex-embed", input=texts, dimensions=64
    )
    answer = raw.parse()

    expected = [list(embedding_vector(text_key(text), 64)) for text in texts]
    assert [item.index for item in answer.data] == [0, 1]
    assert [item.embedding for item in answer.data] == expected
    tokens = sum(count_tokens(text) for text in texts)
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (tokens, tokens)
    assert answer.model == "vertex-embed"

    sent = vertex_requests(stack)[-1]
    assert sent["path"] == f"{LOCATION}/publishers/google/models/{TEXT_EMBEDDING}:predict"
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert orjson.loads(sent["body"]) == {
        "instances": [{"content": text} for text in texts],
        "parameters": {"autoTruncate": False, "outputDimensionality": 64},
    }

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert (line["provider"], line["model"], line["http_status_code"]) == (
        "vertex",
        "vertex-embed",
        200,
    )
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (
        tokens,
        0,
        tokens,
    )
    assert line["cost_usd"] == pytest.approx(tokens * PRICE["input_per_million"] / 1e6)
    assert prompt_tokens(scrape(stack.metrics_url)) - prompt_tokens(before) == tokens


def test_a_batch_for_gemini_embedding_is_a_400_that_never_reaches_vertex(
    stack: LocalStack,
) -> None:
    sent_before = len(vertex_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        chat(stack).embeddings.create(model="gemini-embed", input=["one", "two"])

    assert refused.value.status_code == 400
    assert refused.value.param == "input"
    assert len(vertex_requests(stack)) == sent_before


def test_an_answer_without_vertexs_counts_is_charged_the_estimate(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    text = "Count me, even if Vertex does not."
    before = scrape(stack.metrics_url)
    raw = chat(stack).embeddings.with_raw_response.create(
        model="vertex-embed", input=text, extra_headers={"x-mock-fault": "no_usage=1"}
    )
    answer = raw.parse()
    assert answer.data[0].embedding == list(embedding_vector(text_key(text), 768))

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    estimate = line["prompt_tokens"]
    assert line["usage_estimated"] is True and estimate > 0
    assert prompt_tokens(scrape(stack.metrics_url)) - prompt_tokens(before) == estimate


def test_an_answer_that_is_not_json_is_an_openai_error_charged_nothing(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    before = scrape(stack.metrics_url)
    with pytest.raises(openai.APIStatusError) as failed:
        chat(stack).embeddings.create(
            model="vertex-embed", input="garbled", extra_headers={"x-mock-fault": "garbage=1"}
        )
    assert failed.value.status_code == 502
    error = failed.value.body
    assert isinstance(error, dict) and error.get("type") == "upstream_error"

    # The client got an error, not vectors: nothing is charged (docs/chargeback.md).
    [line] = gateway_log.for_request(failed.value.response.headers["x-request-id"])
    assert line["http_status_code"] == 502 and line["upstream_status_code"] == 200
    assert (line["usage_estimated"], line["total_tokens"]) == (False, 0)
    assert prompt_tokens(scrape(stack.metrics_url)) == prompt_tokens(before)


def test_a_connection_vertex_drops_is_an_openai_error(stack: LocalStack) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        chat(stack).embeddings.create(
            model="vertex-embed", input="dropped", extra_headers={"x-mock-fault": "reset_after=0"}
        )
    assert failed.value.status_code in (502, 503)
    error = failed.value.body
    assert isinstance(error, dict) and "message" in error
