"""Embeddings reviewed again, through the processor: a Bedrock model that is not one of
Titan's or Cohere's embedding models is refused on /v1/embeddings before the quota and
the provider (Titan Text would have read Titan's embeddings body as a prompt and
generated a completion Bedrock bills)."""

from __future__ import annotations

import orjson
import pytest

from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_embeddings import AUTH, EMBEDDINGS, embeddings, error_of


@pytest.fixture
async def signing(config: GatewayConfig, services: Services) -> Processor:
    """The default config's processor, its Bedrock credentials loaded (as serving does)."""
    runtime = Runtime(config, services)
    for signer in runtime.signers.values():
        await signer.start()
    return Processor(lambda: runtime, default_stages())


@pytest.mark.parametrize(
    "model",
    [
        "titan",  # amazon.titan-text-express-v1: {"inputText": ...} is its prompt
        "haiku",  # anthropic.claude-3-haiku-20240307-v1:0
        "llama",  # meta.llama3-8b-instruct-v1:0
    ],
)
async def test_a_bedrock_chat_model_on_the_embeddings_route_is_a_400_before_the_provider(
    signing: Processor, services: Services, model: str
) -> None:
    answers = await run_stream(
        signing,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(model=model))],
    )
    status, error = error_of(answers[-1])
    assert status == 400
    assert (error["code"], error["param"]) == ("unsupported_model_for_route", "model")
    assert f"model '{model}' is a Bedrock model without embeddings" in error["message"]
    assert "/v1/chat/completions" in error["message"]
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["total_tokens"] == 0 and line["quota_decision"] is None


@pytest.mark.parametrize("model", ["titan-embed", "cohere-embed"])
async def test_titan_and_cohere_embedding_models_still_reach_bedrock(
    signing: Processor, model: str
) -> None:
    answers = await run_stream(
        signing,
        [request_headers(EMBEDDINGS, headers=AUTH), request_body(embeddings(model=model))],
    )
    sent = answers[-1].request_body.response
    assert not answers[-1].HasField("immediate_response")
    assert orjson.loads(sent.body_mutation.body)  # the translated InvokeModel body
