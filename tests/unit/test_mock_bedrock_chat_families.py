"""Mistral's chat body, Cohere Command, AI21 Jamba and Writer Palmyra on the mock's
Bedrock InvokeModel and InvokeModelWithResponseStream, read by boto3 over real sockets:
each family's answer and chunks, its default allowance, its answers asked for, and
Bedrock's token counts (headers, and the last chunk's invocation metrics)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.unit.test_mock_bedrock_anthropic import STREAM, invoke, invoke_stream
from tests.unit.test_mock_bedrock_text_models import (
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    PIECES,
    PROMPT,
    REPLY,
    raw,
    without_metrics,
)
from tests.unit.test_mock_llm_bedrock import bedrock

COMMAND = "cohere.command-text-v14"
JAMBA = "ai21.jamba-1-5-mini-v1:0"
PALMYRA = "us.writer.palmyra-x5-v1:0"
MISTRAL_LARGE_2 = "mistral.mistral-large-2407-v1:0"
# A prompt whose reply (the mock quotes it) runs past Cohere Command's and Palmyra's
# defaults (20 and 16 tokens).
LONG = " ".join(f"word{i}" for i in range(20))
USER = [{"role": "user", "content": PROMPT}]


def counts(headers: dict[str, str]) -> tuple[int, int]:
    return (
        int(headers["x-amzn-bedrock-input-token-count"]),
        int(headers["x-amzn-bedrock-output-token-count"]),
    )


async def test_mistral_large_2_answers_its_chat_body(mock_url: str) -> None:
    client = bedrock(mock_url)
    answer = await invoke(client, {"messages": USER, "max_tokens": 50}, MISTRAL_LARGE_2)
    chunks = await invoke_stream(client, {"messages": USER}, MISTRAL_LARGE_2)

    headers = answer.pop("headers")
    message = {"role": "assistant", "content": REPLY}
    assert answer == {"choices": [{"index": 0, "message": message, "stop_reason": "stop"}]}
    assert counts(headers) == (INPUT_TOKENS, OUTPUT_TOKENS)
    sent, metrics = without_metrics(chunks)
    assert [chunk["choices"][0]["message"]["content"] for chunk in sent] == PIECES
    assert [chunk["choices"][0]["stop_reason"] for chunk in sent] == [None] * 8 + ["stop"]
    assert (metrics["inputTokenCount"], metrics["outputTokenCount"]) == (5, OUTPUT_TOKENS)


async def test_mistral_7b_refuses_a_chat_body_as_bedrock_does(http: httpx.AsyncClient) -> None:
    response = await raw(
        http, None, {"messages": USER}, model_id="mistral.mistral-7b-instruct-v0:2"
    )  # type: ignore[arg-type]

    assert response.status_code == 400
    assert "#: required key [prompt] not found" in response.json()["message"]


async def test_cohere_command_answers_each_generation_and_stops_at_its_default(
    mock_url: str,
) -> None:
    client = bedrock(mock_url)
    answer = await invoke(client, {"prompt": LONG, "num_generations": 2}, COMMAND)
    chunks = await invoke_stream(client, {"prompt": PROMPT, "num_generations": 2}, COMMAND)

    headers = answer.pop("headers")
    assert answer["prompt"] == LONG
    [first, second] = answer["generations"]
    assert first["text"] == second["text"] and first["id"] != second["id"]
    assert first["finish_reason"] == "MAX_TOKENS"  # Command writes 20 tokens by default
    assert counts(headers) == (20, 2 * 20)
    sent, metrics = without_metrics(chunks)
    *pieces, last = sent
    assert [(c["index"], c["text"]) for c in pieces] == [(i, p) for i in (0, 1) for p in PIECES]
    assert all(chunk["is_finished"] is False for chunk in pieces)
    assert last["is_finished"] is True and last["finish_reason"] == "COMPLETE"
    assert last["response"]["generations"][0]["text"] == REPLY
    assert metrics["outputTokenCount"] == 2 * OUTPUT_TOKENS


async def test_jamba_answers_n_choices_with_openais_usage(mock_url: str) -> None:
    client = bedrock(mock_url)
    doc = {"messages": [{"role": "system", "content": "Be brief."}, *USER], "n": 3}
    answer = await invoke(client, {**doc, "max_tokens": 4}, JAMBA)
    chunks = await invoke_stream(client, doc, JAMBA)

    headers = answer.pop("headers")
    assert [c["message"]["content"] for c in answer["choices"]] == ["Mock reply to:"] * 3
    assert {c["finish_reason"] for c in answer["choices"]} == {"length"}
    # Be brief . + Say hello , mock !
    assert answer["usage"] == {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}
    assert counts(headers) == (8, 12)
    sent, metrics = without_metrics(chunks)
    *pieces, last = sent
    assert [c["choices"][0]["index"] for c in pieces] == [i for i in range(3) for _ in PIECES]
    assert [c["choices"][0]["delta"]["content"] for c in pieces[:9]] == PIECES
    assert [c["finish_reason"] for c in last["choices"]] == ["stop"] * 3
    assert last["usage"]["completion_tokens"] == metrics["outputTokenCount"] == 27


async def test_a_jamba_allowance_of_zero_answers_nothing(mock_url: str) -> None:
    answer = await invoke(bedrock(mock_url), {"messages": USER, "max_tokens": 0}, JAMBA)

    assert counts(answer.pop("headers")) == (INPUT_TOKENS, 0)
    assert answer["choices"][0]["message"]["content"] == ""


async def test_palmyra_takes_its_pages_content_object_and_stops_at_16(mock_url: str) -> None:
    client = bedrock(mock_url)
    doc = {"messages": [{"role": "user", "content": {"text": LONG}}]}
    answer = await invoke(client, doc, PALMYRA)
    chunks = await invoke_stream(client, {"messages": USER}, PALMYRA)

    headers = answer.pop("headers")
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert counts(headers) == (20, 16)
    sent, metrics = without_metrics(chunks)
    assert {chunk["object"] for chunk in sent} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in sent) == REPLY
    assert sent[-1]["choices"][0]["finish_reason"] == "stop"
    assert metrics["outputTokenCount"] == OUTPUT_TOKENS


@pytest.mark.parametrize("operation", ["invoke", STREAM])
@pytest.mark.parametrize(
    ("model_id", "doc", "violations"),
    [
        (
            COMMAND,
            {"prompt": PROMPT, "num_generations": 6, "stream": "yes"},
            "#/stream: expected type: Boolean, found: String"
            "#/num_generations: 6 is not less or equal to 5",
        ),
        (JAMBA, {"messages": [], "n": 17}, "#/messages: expected minimum item count: 1, found: 0"),
        (JAMBA, {"messages": [{"content": "hi"}]}, "#/messages/0: required key [role] not found"),
        (PALMYRA, {"prompt": PROMPT}, "#: required key [messages] not found"),
    ],
    ids=["command", "jamba-empty", "jamba-role", "palmyra"],
)
async def test_bodies_bedrock_refuses_are_400s_naming_the_rule(
    http: httpx.AsyncClient, operation: str, model_id: str, doc: dict[str, Any], violations: str
) -> None:
    response = await raw(http, None, doc, operation=operation, model_id=model_id)  # type: ignore[arg-type]

    assert response.status_code == 400
    assert violations in response.json()["message"]
