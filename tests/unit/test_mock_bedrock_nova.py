"""Amazon Nova's text models on the mock's Bedrock InvokeModel and
InvokeModelWithResponseStream, read by boto3: Nova's own body (``messages`` of text
blocks, ``inferenceConfig``) and answer (Converse's shape), its stream Converse's events
one a chunk, the allowance read under either of its names."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.unit.test_mock_bedrock_anthropic import invoke, invoke_stream
from tests.unit.test_mock_llm_bedrock import bedrock

NOVA = "amazon.nova-lite-v1:0"
PIECES = ["Mock", " reply", " to", ":", " Say", " hello", ",", " mock", "!"]
METRICS = "amazon-bedrock-invocationMetrics"


def nova_body(**config: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": "messages-v1",
        "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Say hello, mock!"}]}],
    }
    return {**doc, "inferenceConfig": config} if config else doc


async def test_invoke_model_answers_in_novas_body_with_its_usage(mock_url: str) -> None:
    answer = await invoke(bedrock(mock_url), nova_body(temperature=0.5), NOVA)

    headers = answer.pop("headers")
    assert answer == {
        "output": {
            "message": {"role": "assistant", "content": [{"text": "".join(PIECES)}]}
        },
        "stopReason": "end_turn",
        # The system's text counts: Be brief . Say hello , mock !
        "usage": {"inputTokens": 8, "outputTokens": 9, "totalTokens": 17,
                  "cacheReadInputTokenCount": 0, "cacheWriteInputTokenCount": 0},
    }  # fmt: skip
    assert headers["x-amzn-bedrock-input-token-count"] == "8"
    assert headers["x-amzn-bedrock-output-token-count"] == "9"


@pytest.mark.parametrize("name", ["maxTokens", "max_new_tokens"])
async def test_either_name_of_the_allowance_cuts_the_reply(mock_url: str, name: str) -> None:
    answer = await invoke(bedrock(mock_url), nova_body(**{name: 3}), "us.amazon.nova-pro-v1:0")

    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to"}]
    assert answer["stopReason"] == "max_tokens"
    assert answer["usage"]["outputTokens"] == 3


async def test_the_stream_is_converses_events_one_a_chunk(mock_url: str) -> None:
    chunks = await invoke_stream(bedrock(mock_url), nova_body(maxTokens=3), NOVA)

    metrics = chunks[-1].pop(METRICS)
    assert chunks == [
        {"messageStart": {"role": "assistant"}},
        *({"contentBlockDelta": {"delta": {"text": piece}, "contentBlockIndex": 0}}
          for piece in PIECES[:3]),
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "max_tokens"}},
        {"metadata": {"usage": {"inputTokens": 8, "outputTokens": 3, "totalTokens": 11,
                                "cacheReadInputTokenCount": 0,
                                "cacheWriteInputTokenCount": 0},
                      "metrics": {}, "trace": {}}},
    ]  # fmt: skip
    assert (metrics["inputTokenCount"], metrics["outputTokenCount"]) == (8, 3)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"prompt": "hi"}, "#: required key [messages] not found"),
        (nova_body(maxTokens=0), "#/inferenceConfig/maxTokens: 0 is not greater or equal to 1"),
        (nova_body(max_tokens=10), "#/inferenceConfig: extraneous key [max_tokens]"),
    ],
)
async def test_bodies_bedrock_refuses_are_validation_exceptions(
    mock_url: str, doc: dict[str, Any], words: str
) -> None:
    with pytest.raises(ClientError) as caught:
        await invoke(bedrock(mock_url), doc, NOVA)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert words in caught.value.response["Error"]["Message"]


async def test_novas_image_models_are_no_text_model(mock_url: str) -> None:
    with pytest.raises(ClientError) as caught:
        await invoke(bedrock(mock_url), {"taskType": "TEXT_IMAGE"}, "amazon.nova-canvas-v1:0")
    assert caught.value.response["Error"]["Code"] == "ValidationException"
