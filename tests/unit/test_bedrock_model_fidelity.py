"""What differs by Bedrock model: the translator sends each model what it takes, and the mock
refuses, with Bedrock's words, what the model does not take (driven by the official boto3
client, so that the integration tests built on it prove something).

- Titan and Mistral 7B / Mixtral take no Converse ``system``: its text opens the first user
  turn, whatever form the model id takes (id, inference profile, ARN).
- Claude gets ``temperature`` or else ``top_p``, never both (Claude 4.5 refuses both).
- The mock: system prompts, tools, streaming tools, images and ``maxTokens`` per model; image
  blocks whose bytes are not the format they name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from extproc.testing import serve_mock
from extproc.translators.openai_bedrock import base_model_id, model_takes_system, translate_request

TITAN = "amazon.titan-text-express-v1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
CLAUDE_45 = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "hello"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(8)
JPEG = b"\xff\xd8\xff\xe0" + bytes(8)


# --- which model an id names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "base"),
    [
        (TITAN, TITAN),
        ("us.anthropic.claude-3-haiku-20240307-v1:0", HAIKU),
        ("apac.amazon.nova-micro-v1:0", "amazon.nova-micro-v1:0"),
        (f"arn:aws:bedrock:eu-west-1::foundation-model/{TITAN}", TITAN),
        (f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{HAIKU}", HAIKU),
        # A provisioned model hides which model it runs.
        ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc", None),
    ],
)
def test_the_base_model_of_an_id_profile_or_arn(model_id: str, base: str | None) -> None:
    assert base_model_id(model_id) == (base or model_id)


@pytest.mark.parametrize(
    ("model_id", "takes"),
    [
        (TITAN, False),
        ("amazon.titan-text-premier-v1:0", False),
        ("mistral.mistral-7b-instruct-v0:2", False),
        ("mistral.mixtral-8x7b-instruct-v0:1", False),
        (f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN}", False),
        ("mistral.mistral-large-2402-v1:0", True),
        ("meta.llama3-8b-instruct-v1:0", True),
        (HAIKU, True),
        ("", True),
    ],
)
def test_models_without_system_prompts(model_id: str, takes: bool) -> None:
    assert model_takes_system(model_id) is takes


# --- the translator ------------------------------------------------------------------------


def test_the_system_text_opens_the_first_user_turn_of_titan() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}
    converse = translate_request(
        {"messages": [SYSTEM, {"role": "user", "content": [image, {"type": "text", "text": "x"}]}]},
        model_id=TITAN,
    )

    assert "system" not in converse
    # Not glued to an image: a text block of its own, first.
    assert converse["messages"][0]["content"][0] == {"text": "Be brief."}


def test_a_conversation_that_opens_with_the_assistant_gets_a_user_turn_first() -> None:
    converse = translate_request(
        {"messages": [SYSTEM, {"role": "assistant", "content": "Hi!"}, USER]}, model_id=TITAN
    )

    assert converse["messages"] == [
        {"role": "user", "content": [{"text": "Be brief."}]},
        {"role": "assistant", "content": [{"text": "Hi!"}]},
        {"role": "user", "content": [{"text": "hello"}]},
    ]


def test_models_with_system_prompts_keep_them() -> None:
    converse = translate_request({"messages": [SYSTEM, USER]}, model_id=HAIKU)

    assert converse["system"] == [{"text": "Be brief."}]
    assert converse["messages"] == [{"role": "user", "content": [{"text": "hello"}]}]


@pytest.mark.parametrize(
    ("model_id", "sampling"),
    [
        (CLAUDE_45, {"temperature": 0.5}),
        (HAIKU, {"temperature": 0.5}),
        (TITAN, {"temperature": 0.5, "topP": 0.9}),
    ],
)
def test_claude_gets_the_temperature_or_else_top_p(
    model_id: str, sampling: dict[str, float]
) -> None:
    both = translate_request(
        {"messages": [USER], "temperature": 0.5, "top_p": 0.9}, model_id=model_id
    )
    top_p_alone = translate_request({"messages": [USER], "top_p": 0.9}, model_id=model_id)

    assert both["inferenceConfig"] == sampling
    assert top_p_alone["inferenceConfig"] == {"topP": 0.9}


# --- the mock refuses what the model does not take -----------------------------------------


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


def bedrock(url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDMOCK",
        aws_secret_access_key="mock-secret-key",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )


async def bedrock_refusal(url: str, *, stream: bool = False, **request: Any) -> str:
    """Bedrock's message for a Converse (or ConverseStream) request the mock refuses."""
    request.setdefault("messages", [{"role": "user", "content": [{"text": "hello"}]}])
    call = bedrock(url).converse_stream if stream else bedrock(url).converse
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(call, **request)
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    message: str = error["Message"]
    return message


TOOLS = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {}}}}]}


@pytest.mark.parametrize("model_id", [TITAN, "mistral.mistral-7b-instruct-v0:2"])
async def test_the_mock_refuses_a_system_prompt_where_bedrock_does(
    mock_url: str, model_id: str
) -> None:
    message = await bedrock_refusal(mock_url, modelId=model_id, system=[{"text": "Be brief."}])

    assert message.startswith("This model doesn't support system messages.")


@pytest.mark.parametrize("model_id", [TITAN, "meta.llama3-8b-instruct-v1:0"])
async def test_the_mock_refuses_tools_where_bedrock_does(mock_url: str, model_id: str) -> None:
    message = await bedrock_refusal(mock_url, modelId=model_id, toolConfig=TOOLS)

    assert message == "This model doesn't support tool use."


async def test_the_mock_refuses_streamed_tool_use_where_bedrock_does(mock_url: str) -> None:
    model_id = "mistral.mistral-large-2402-v1:0"

    answered = await asyncio.to_thread(
        bedrock(mock_url).converse,
        modelId=model_id,
        messages=[{"role": "user", "content": [{"text": "hello"}]}],
        toolConfig=TOOLS,
    )
    message = await bedrock_refusal(mock_url, stream=True, modelId=model_id, toolConfig=TOOLS)

    assert answered["stopReason"] == "end_turn"
    assert message == "This model doesn't support tool use in streaming mode."


async def test_the_mock_refuses_max_tokens_above_the_models_limit(mock_url: str) -> None:
    message = await bedrock_refusal(mock_url, modelId=HAIKU, inferenceConfig={"maxTokens": 4097})

    assert "exceeds the model limit of 4096" in message


async def test_the_mock_refuses_temperature_with_top_p_for_claude_4_5(mock_url: str) -> None:
    message = await bedrock_refusal(
        mock_url, modelId=CLAUDE_45, inferenceConfig={"temperature": 0.5, "topP": 0.9}
    )

    assert "`temperature` and `top_p` cannot both be specified" in message


def image_turn(image_format: str, data: bytes) -> list[dict[str, Any]]:
    image = {"image": {"format": image_format, "source": {"bytes": data}}}
    return [{"role": "user", "content": [{"text": "describe"}, image]}]


async def test_the_mock_refuses_an_image_for_a_model_without_vision(mock_url: str) -> None:
    message = await bedrock_refusal(mock_url, modelId=TITAN, messages=image_turn("png", PNG))

    assert message == "This model doesn't support the image field for user messages."


async def test_the_mock_refuses_image_bytes_of_another_format(mock_url: str) -> None:
    message = await bedrock_refusal(mock_url, modelId=HAIKU, messages=image_turn("png", JPEG))

    assert message.endswith("The provided image does not match the specified image format.")


async def test_the_mock_takes_an_image_of_the_format_it_names(mock_url: str) -> None:
    answer = await asyncio.to_thread(
        bedrock(mock_url).converse, modelId=HAIKU, messages=image_turn("jpeg", JPEG)
    )

    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to: describe"}]


async def test_what_the_translator_sends_titan_with_a_system_message_is_accepted(
    mock_url: str,
) -> None:
    converse = translate_request({"messages": [SYSTEM, USER]}, model_id=TITAN)

    answer = await asyncio.to_thread(bedrock(mock_url).converse, modelId=TITAN, **converse)

    assert answer["output"]["message"]["content"] == [{"text": "Mock reply to: Be brief.\n\nhello"}]
