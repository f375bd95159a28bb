"""InvokeModel bodies of Cohere Command, AI21 Jamba, Writer Palmyra and Mistral's chat body
through the gateway: boto3's ``invoke_model`` and ``invoke_model_with_response_stream``
over real Envoy (HTTPS), the gateway, embedded Valkey and the mock Bedrock, which answers
each family in its own body. What a user sees: the answer boto3 reads, the usage in the
request's log line and in ``tokens_consumed_total``, and, under a hard-capped budget, the
body Bedrock received: as the client sent it when its allowance (or its model's default)
fits, else with the limit the gateway wrote. The stack is the Converse tests'."""

# ruff: noqa: F401, F811

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, metric, scrape
from tests.integration.test_bedrock_converse import (
    NOVA_BUDGET,
    TlsStack,
    bedrock_client,
    stack,
    tls,
    with_headers,
)
from tests.integration.test_bedrock_invoke import events_of, invocations, request_id

COMMAND = "cohere.command-text-v14"
JAMBA = "ai21.jamba-1-5-mini-v1:0"
PALMYRA = "us.writer.palmyra-x5-v1:0"
MISTRAL_LARGE_2 = "mistral.mistral-large-2407-v1:0"
PROMPT = "Say hello to the gateway, please."
# A prompt whose reply (the mock quotes it) is longer than Cohere Command's default of 20.
LONG = " ".join(f"word{i}" for i in range(24))
USER = [{"role": "user", "content": PROMPT}]


def token_counts(answer: dict[str, Any]) -> tuple[int, int]:
    """Bedrock's counts of a JSON answer, from its headers."""
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    return (
        int(headers["x-amzn-bedrock-input-token-count"]),
        int(headers["x-amzn-bedrock-output-token-count"]),
    )


def consumed(samples: dict[Any, float], model: str) -> tuple[float, float]:
    return (
        metric(samples, "tokens_consumed_total", model=model, token_type="prompt"),
        metric(samples, "tokens_consumed_total", model=model, token_type="completion"),
    )


def test_cohere_command_answers_every_generation_and_each_is_billed(
    tls: TlsStack, stack: LocalStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scrape(stack.metrics_url)
    client = bedrock_client(tls, monkeypatch)
    body = json.dumps({"prompt": LONG, "num_generations": 2, "temperature": 0.3})
    answer = client.invoke_model(modelId=COMMAND, body=body)

    generations = json.loads(answer["body"].read())["generations"]
    assert len(generations) == 2
    # No max_tokens: Command stops at its own 20.
    assert {g["finish_reason"] for g in generations} == {"MAX_TOKENS"}
    prompt, completion = token_counts(answer)
    assert completion == 2 * 20
    [line] = gateway_log.for_request(request_id(answer))
    assert (line["model"], line["outcome"], line["usage_reported"]) == (COMMAND, "completed", True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, completion)
    after = scrape(stack.metrics_url)
    (prompt_after, completion_after), (prompt_before, completion_before) = (
        consumed(after, COMMAND),
        consumed(before, COMMAND),
    )
    assert (prompt_after - prompt_before, completion_after - completion_before) == (
        prompt,
        completion,
    )

    streamed = client.invoke_model_with_response_stream(
        modelId=COMMAND, body=json.dumps({"prompt": PROMPT, "max_tokens": 50})
    )
    *pieces, last = events_of(streamed)
    assert "".join(chunk["text"] for chunk in pieces) == "Mock reply to: " + PROMPT
    assert last["is_finished"] is True and last["finish_reason"] == "COMPLETE"
    metrics = last["amazon-bedrock-invocationMetrics"]
    [line] = gateway_log.for_request(request_id(streamed))
    assert line["outcome"] == "completed" and line["finish_reasons"] == ["COMPLETE"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        metrics["inputTokenCount"],
        metrics["outputTokenCount"],
    )


def test_jamba_palmyra_and_mistrals_chat_body_are_read_and_billed(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bedrock_client(tls, monkeypatch)
    jamba = client.invoke_model(
        modelId=JAMBA, body=json.dumps({"messages": USER, "n": 3, "max_tokens": 100})
    )
    completion = json.loads(jamba["body"].read())
    assert len(completion["choices"]) == 3
    [line] = gateway_log.for_request(request_id(jamba))
    assert (line["prompt_tokens"], line["completion_tokens"]) == token_counts(jamba)
    assert line["completion_tokens"] == completion["usage"]["completion_tokens"]

    streamed = client.invoke_model_with_response_stream(
        modelId=JAMBA, body=json.dumps({"messages": USER, "n": 2})
    )
    chunks = events_of(streamed)
    texts = ["", ""]
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        texts[choice["index"]] += choice["delta"]["content"]
    assert texts == ["Mock reply to: " + PROMPT] * 2
    [line] = gateway_log.for_request(request_id(streamed))
    assert line["outcome"] == "completed" and line["usage_reported"] is True
    assert line["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]

    palmyra = client.invoke_model_with_response_stream(
        modelId=PALMYRA, body=json.dumps({"messages": [{"role": "user", "content": LONG}]})
    )
    chunks = events_of(palmyra)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # Palmyra's default of 16
    [line] = gateway_log.for_request(request_id(palmyra))
    assert line["completion_tokens"] == 16 and line["finish_reasons"] == ["length"]

    mistral = client.invoke_model(modelId=MISTRAL_LARGE_2, body=json.dumps({"messages": USER}))
    [choice] = json.loads(mistral["body"].read())["choices"]
    assert choice["message"]["content"] == "Mock reply to: " + PROMPT
    [line] = gateway_log.for_request(request_id(mistral))
    assert (line["prompt_tokens"], line["completion_tokens"]) == token_counts(mistral)
    assert line["finish_reasons"] == ["stop"]


def test_a_hard_cap_leaves_a_body_that_fits_and_lowers_one_that_does_not(
    tls: TlsStack, gateway_log: GatewayLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = with_headers(bedrock_client(tls, monkeypatch), {"x-budget": "nova-capped"})
    # Palmyra's own 16 and Command's 20 (twice) fit the budget: the bytes as they came.
    for model, body in (
        (PALMYRA, json.dumps({"messages": USER})),
        (COMMAND, json.dumps({"prompt": PROMPT, "num_generations": 2})),
    ):
        answer = client.invoke_model(modelId=model, body=body)
        assert invocations(tls.stack)[-1]["body"] == body
        [line] = gateway_log.for_request(request_id(answer))
        assert line["quota_decision"] != "capped"

    # Jamba's 4,000 tokens for each of two answers do not: lowered where the client wrote
    # it, the room shared by the answers.
    jamba = client.invoke_model(
        modelId=JAMBA, body=json.dumps({"messages": USER, "n": 2, "max_tokens": 4000})
    )
    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    assert sent["n"] == 2 and 0 < sent["max_tokens"] < NOVA_BUDGET // 2
    assert token_counts(jamba)[1] <= 2 * sent["max_tokens"]
    [line] = gateway_log.for_request(request_id(jamba))
    assert line["quota_decision"] == "capped"

    # team2's budget of 120 cannot hold five of Command's 20 beside this prompt: the cap
    # writes Command's own max_tokens, below its default.
    capped = bedrock_client(tls, monkeypatch, key="team2-key")
    body = {"prompt": LONG, "num_generations": 5}
    answer = capped.invoke_model_with_response_stream(modelId=COMMAND, body=json.dumps(body))
    chunks = events_of(answer)
    sent = orjson.loads(invocations(tls.stack)[-1]["body"])
    assert set(sent) == {"prompt", "num_generations", "max_tokens"}
    assert 0 < sent["max_tokens"] < 20
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 5 * sent["max_tokens"]
    [line] = gateway_log.for_request(request_id(answer))
    assert line["quota_decision"] == "capped" and line["outcome"] == "completed"
    assert line["completion_tokens"] == metrics["outputTokenCount"]
