"""Bedrock names no model in its answers, so an OpenAI client's answer translated from
Bedrock's carries the name the client asked for, after failover too. A request that asked
for the primary by its own name and failed over to a Bedrock fallback got an answer naming
the fallback's configured name instead (the same request by the model's alias got the
alias, by its group the group's name). The attempt now names what the client asked for,
whatever name it used."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from extproc import headers
from extproc.config import parse_config
from extproc.model_groups import Balancer
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.attempt import attempt_stages
from extproc.stages.pipeline import default_stages
from extproc.testing import response_body, response_headers
from tests.unit.test_failover_cut_attempts import attempt
from tests.unit.test_model_groups import CONFIG, chat, services_with

BEDROCK = (
    "  - {name: brock, type: bedrock, base_url: 'http://127.0.0.1:4',"
    " aws: {region: us-east-1, access_key_id: AKIDEXAMPLE, secret_access_key: s}}\n"
)
# gpt-east (alias fast) fails over to nova, on Bedrock.
WITH_BEDROCK_FALLBACK = CONFIG.replace("models:\n", BEDROCK + "models:\n", 1).replace(
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat}\n",
    "  - {name: gpt-east, provider: east, upstream_model: gpt-4o, kind: chat,"
    " aliases: [fast], fallbacks: [nova]}\n"
    "  - {name: nova, provider: brock, upstream_model: 'amazon.nova-pro-v1:0'}\n",
)
CONVERSE = orjson.dumps(
    {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hi."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
    }
)
ANSWERED_BY_NOVA = {
    headers.ANSWERED_BY_PROVIDER: "brock",
    headers.ANSWERED_BY_MODEL: "nova",
    headers.ANSWERED_UPSTREAM_MODEL: "amazon.nova-pro-v1:0",
    "content-type": "application/json",
}


async def failed_over_to_bedrock(services: Services, model: str) -> dict[str, Any]:
    """A request for ``model`` whose primary's provider answers 503: Envoy retries on
    nova's Bedrock, which answers. Each attempt runs through the processor's attempt
    stages, and the downstream filter gets the last one's translated answer, as Envoy
    passes it. The answer the client got."""
    runtime = Runtime(parse_config(WITH_BEDROCK_FALLBACK, "gateway.yaml", {}), services)
    await runtime.start()  # the Bedrock attempt's signer
    processor = Processor(lambda: runtime, default_stages(), attempt_stages())
    answers: list[Any] = []
    client: list[bytes] = []

    async def envoy() -> AsyncIterator[Any]:
        for message in chat(model):
            yield message
        sent = answers[-1].request_body.response.body_mutation.body
        await attempt(processor, "east", sent, 503, b'{"error": {"message": "overloaded"}}')
        _, replies = await attempt(
            processor, "brock", sent, 200, CONVERSE, {"content-type": "application/json"}
        )
        [translated] = [
            reply.response_body.response.body_mutation.body
            for reply in replies
            if reply.WhichOneof("response") == "response_body"
        ]
        client.append(translated)
        yield response_headers(200, ANSWERED_BY_NOVA)
        yield response_body(translated)

    try:
        async for answer in processor.process(envoy()):
            answers.append(answer)
    finally:
        await runtime.close()
    parsed: dict[str, Any] = orjson.loads(client[0])
    return parsed


@pytest.mark.parametrize("asked", ["gpt-east", "fast"])
async def test_a_bedrock_fallbacks_answer_names_the_model_the_client_asked_for(
    asked: str,
) -> None:
    services = services_with(Balancer())
    answer = await failed_over_to_bedrock(services, asked)
    assert answer["model"] == asked
    assert answer["choices"][0]["message"]["content"] == "Hi."
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["model"], line["provider"]) == (asked, "brock")
    # The attempt Envoy retried counts under the name asked, as before.
    errors = {"model": asked, "provider": "east", "status_code": "503"}
    assert services.metrics.registry.get_sample_value("aigw_upstream_errors_total", errors) == 1
