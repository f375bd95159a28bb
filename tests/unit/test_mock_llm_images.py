"""The mock's GPT Image model, read with the official openai client: the Responses API's
image_generation tool (``tool_usage.image_gen``), and the Images API.

The counts follow docs/mock-llm.md: the picture's input is its prompt's tokens, its
output ``OUTPUT_TOKENS[quality]`` per picture (``auto`` as medium: 1,056). The gateway
bills them, so the tests predict them exactly.
"""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import count_tokens
from extproc.mock_llm.image_bytes import format_of
from extproc.mock_llm.images_api import (
    DEFAULT_IMAGE_MODEL,
    EDIT_IMAGE_TOKENS,
    OUTPUT_TOKENS,
    PNG_BASE64,
)

MODEL = "gpt-4o-mini"
QUESTION = "Draw a cat on a mat."
REPLY = "Mock reply to: " + QUESTION


def test_the_picture_is_a_png() -> None:
    assert format_of(base64.b64decode(PNG_BASE64)) == "png"


async def test_the_image_tool_draws_and_reports_its_tokens_apart(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.responses.create(
        model=MODEL, input=QUESTION, tools=[{"type": "image_generation", "quality": "low"}]
    )
    call, message = answer.output
    assert call.type == "image_generation_call"
    assert call.result == PNG_BASE64
    assert message.type == "message"
    # OpenAI fills in the tool's default model.
    (tool,) = answer.tools
    assert tool.type == "image_generation" and tool.model == DEFAULT_IMAGE_MODEL
    assert answer.tool_usage is not None
    drawn = answer.tool_usage.image_gen
    assert (drawn.input_tokens, drawn.output_tokens) == (count_tokens(REPLY), OUTPUT_TOKENS["low"])
    assert drawn.input_tokens_details.image_tokens == 0
    # The answering model's usage is its own.
    assert answer.usage is not None
    assert answer.usage.output_tokens == count_tokens(REPLY)


async def test_a_stream_shows_the_call_and_ends_with_the_tool_usage(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.responses.create(
        model=MODEL,
        input=QUESTION,
        tools=[{"type": "image_generation", "model": "gpt-image-1-mini"}],
        stream=True,
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert "response.image_generation_call.generating" in kinds
    assert kinds.index("response.image_generation_call.completed") < kinds.index(
        "response.output_text.delta"
    )
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.tools[0].model == "gpt-image-1-mini"
    assert final.response.tool_usage is not None
    assert final.response.tool_usage.image_gen.output_tokens == OUTPUT_TOKENS["medium"]


async def test_without_the_tool_nothing_is_drawn(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.responses.create(model=MODEL, input=QUESTION)
    assert [item.type for item in answer.output] == ["message"]
    assert answer.tool_usage is None


async def test_images_generate_answers_pictures_and_usage(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.images.generate(
        model="gpt-image-1", prompt=QUESTION, n=2, quality="high"
    )
    assert answer.data is not None
    assert [each.b64_json for each in answer.data] == [PNG_BASE64, PNG_BASE64]
    assert answer.usage is not None
    assert answer.usage.input_tokens == count_tokens(QUESTION)
    assert answer.usage.input_tokens_details.text_tokens == count_tokens(QUESTION)
    assert answer.usage.output_tokens == 2 * OUTPUT_TOKENS["high"]
    assert answer.usage.total_tokens == count_tokens(QUESTION) + 2 * OUTPUT_TOKENS["high"]


async def test_images_generate_streams_partial_pictures_then_the_usage(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.images.generate(
        model="gpt-image-1", prompt=QUESTION, stream=True, partial_images=2, quality="low"
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    final = events[-1]
    assert final.type == "image_generation.completed"
    assert final.usage.output_tokens == OUTPUT_TOKENS["low"]


async def test_a_streamed_generation_of_two_pictures_reports_each_in_its_own_event(
    openai_client: AsyncOpenAI,
) -> None:
    """As OpenAI streams ``n`` pictures: each picture's partial pictures, then its
    completed event with that picture and its own usage."""
    stream = await openai_client.images.generate(
        model="gpt-image-1", prompt=QUESTION, stream=True, n=2, partial_images=1, quality="low"
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ] * 2
    for final in events[1::2]:
        assert final.type == "image_generation.completed"
        assert final.usage.input_tokens == count_tokens(QUESTION)
        assert final.usage.output_tokens == OUTPUT_TOKENS["low"]


async def test_images_generate_refuses_what_openai_refuses(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.images.generate(model="gpt-image-1", prompt="x", n=11)
    assert refused.value.body is not None
    assert refused.value.param == "n"


async def test_images_edit_answers_pictures_and_usage_with_the_input_pictures(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.images.edit(
        model="gpt-image-1",
        image=[("a.png", b"\x89PNG-a"), ("b.png", b"\x89PNG-b")],
        prompt=QUESTION,
        quality="low",
    )
    assert answer.data is not None and [each.b64_json for each in answer.data] == [PNG_BASE64]
    assert answer.usage is not None
    details = answer.usage.input_tokens_details
    assert (details.text_tokens, details.image_tokens) == (
        count_tokens(QUESTION),
        2 * EDIT_IMAGE_TOKENS,
    )
    assert answer.usage.input_tokens == count_tokens(QUESTION) + 2 * EDIT_IMAGE_TOKENS
    assert answer.usage.output_tokens == OUTPUT_TOKENS["low"]


async def test_images_edit_streams_image_edit_events(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.images.edit(
        model="gpt-image-1",
        image=("a.png", b"\x89PNG"),
        prompt=QUESTION,
        stream=True,
        partial_images=1,
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "image_edit.partial_image",
        "image_edit.completed",
    ]


async def test_images_edit_without_a_picture_is_openais_400(http: httpx.AsyncClient) -> None:
    refused = await http.post(
        "/v1/images/edits",
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"mask": ("m.png", b"M", "image/png")},
        headers={"authorization": "Bearer k"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "image"
