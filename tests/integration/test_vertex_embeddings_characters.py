"""Vertex's text embeddings priced per 1,000 characters, through real Envoy and the gateway
with the official ``openai`` client: the request is billed by the characters the mock's
Vertex says it billed (``metadata.billableCharacterCount``), and the log line, the cost
counter and the tokens agree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.mock_vertex import stack_serving, vertex_config
from tests.integration.test_vertex import chat

# text-embedding-005's online price at the time of writing, per 1,000 characters, and a
# token price that only an answer without a character count would use.
PRICE = {
    "input_per_thousand_characters": "0.000025",
    "input_per_million": "0.10",
    "output_per_million": "0",
}


def characters_config() -> dict[str, Any]:
    return vertex_config({"vertex-embed": "text-embedding-005"}, {"vertex-embed": PRICE})


stack = stack_serving(characters_config, "vertex-embeddings-characters")


def test_an_embedding_batch_is_billed_by_the_characters_vertex_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    texts = ["Hello Vertex, embed me.", "A second text, somewhat longer than the first."]
    raw = chat(stack).embeddings.with_raw_response.create(model="vertex-embed", input=texts)
    answer = raw.parse()
    tokens = sum(count_tokens(text) for text in texts)
    assert answer.usage.prompt_tokens == tokens

    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    # The mock bills every character of the texts sent.
    characters = sum(len(text) for text in texts)
    expected = characters * Decimal(PRICE["input_per_thousand_characters"]) / 1000
    assert (line["prompt_tokens"], Decimal(str(line["cost_usd"]))) == (tokens, expected)
    counted = metric(scrape(stack.metrics_url), "aigw_cost_usd_total", model="vertex-embed")
    assert counted == float(expected)
