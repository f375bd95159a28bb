"""A review of what the translators send for an OpenAI client, and of the mock's fidelity
where the translated requests depend on it.

Images: OpenAI reads an inline image's format from its bytes and takes a data URL labelled
loosely (``image/jpg``; a screenshot's PNG sent as ``image/jpeg``). Anthropic and Bedrock's
Converse take the format the request names, only png, jpeg, gif and webp spelled their way,
and refuse bytes of another format than named. Stop sequences: Anthropic refuses one that
is only whitespace (``"\\n"``, which OpenAI clients send to end an answer at its line).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from anthropic import AsyncAnthropicVertex

from extproc.errors import BadRequestError
from extproc.mock_llm.anthropic_api import InvalidRequestError, parse_messages_request
from extproc.mock_llm.recorder import Body
from extproc.translators import openai_anthropic, openai_bedrock
from tests.unit.test_mock_vertex import (
    PROJECT,
    REGION,
    VERTEX_BODY,
    Vertex,
    credentials,
    refresh,
    vertex_mock,
)

# The first bytes of an image of each format Anthropic and Converse take.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8ffff3f0005fe02fea7d6a4a80000000049454e44ae426082"
)
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\r\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88"
# (the data URL's label, the image's bytes, the format they are)
MISLABELLED = [
    pytest.param("image/jpg", JPEG, "jpeg", id="jpg-label"),
    pytest.param("image/jpeg", PNG, "png", id="png-sent-as-jpeg"),
    pytest.param("image/PNG", PNG, "png", id="capital-label"),
    pytest.param("image/png", GIF, "gif", id="gif-sent-as-png"),
    pytest.param("image/jpeg", WEBP, "webp", id="webp-sent-as-jpeg"),
]


def data_url(label: str, image: bytes) -> str:
    return f"data:{label};base64,{base64.b64encode(image).decode()}"


def asking_about(url: str) -> dict[str, Any]:
    """A chat completions body asking about the image at ``url``."""
    image = {"type": "image_url", "image_url": {"url": url}}
    content = [{"type": "text", "text": "What is it?"}, image]
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def anthropic_body(**fields: Any) -> Body:
    doc = {"model": "claude-sonnet-4-5", "max_tokens": 50, **fields}
    return Body(orjson.dumps(doc), True, doc)


def image_block(media_type: str, image: bytes) -> dict[str, Any]:
    data = base64.b64encode(image).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


# --- the gateway: what the translators send ---------------------------------------------------


@pytest.mark.parametrize(("label", "image", "found"), MISLABELLED)
def test_claude_gets_an_image_as_the_format_its_bytes_are(
    label: str, image: bytes, found: str
) -> None:
    sent = openai_anthropic.translate_request(
        asking_about(data_url(label, image)), "claude-sonnet-4-5", stream=False
    )

    source = sent["messages"][0]["content"][1]["source"]
    assert source == {
        "type": "base64",
        "media_type": f"image/{found}",
        "data": base64.b64encode(image).decode(),
    }
    # What Anthropic checks, the mock checks: the request must pass it.
    parse_messages_request(Body(orjson.dumps(sent), True, sent))


@pytest.mark.parametrize(("label", "image", "found"), MISLABELLED)
def test_converse_gets_an_image_as_the_format_its_bytes_are(
    label: str, image: bytes, found: str
) -> None:
    sent = openai_bedrock.translate_request(asking_about(data_url(label, image)))

    assert sent["messages"][0]["content"][1] == {
        "image": {"format": found, "source": {"bytes": base64.b64encode(image).decode()}}
    }


@pytest.mark.parametrize("stop", ["\n", ["END", "\n\n"], [" "]])  # [""] is left out
def test_a_stop_sequence_of_whitespace_alone_is_refused_naming_stop(stop: Any) -> None:
    # Anthropic refuses it (400 "stop_sequences: each stop sequence must contain
    # non-whitespace"), naming a field the OpenAI client never sent, after the quota
    # counted the request; dropped, the answer would run past the line the client
    # wanted it to end at.
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stop": stop}
    with pytest.raises(BadRequestError) as refused:
        openai_anthropic.translate_request(body, "claude-sonnet-4-5", stream=False)
    assert refused.value.param == "stop"


# --- the mock: what Anthropic refuses, the mock refuses ----------------------------------------


@pytest.mark.parametrize(
    ("block", "said"),
    [
        pytest.param(
            image_block("image/jpg", JPEG),
            "messages.0.content.1.image.source.base64.media_type: Input should be "
            "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            id="jpg-label",
        ),
        pytest.param(
            image_block("image/jpeg", PNG),
            "messages.0.content.1.image.source.base64.data: The image was specified using "
            "the image/jpeg media type, but the image appears to be a image/png image",
            id="png-sent-as-jpeg",
        ),
    ],
)
def test_the_mock_refuses_an_image_anthropic_refuses(block: dict[str, Any], said: str) -> None:
    content = [{"type": "text", "text": "What is it?"}, block]
    with pytest.raises(InvalidRequestError) as refused:
        parse_messages_request(anthropic_body(messages=[{"role": "user", "content": content}]))
    assert str(refused.value) == said


def test_the_mock_takes_an_image_anthropic_takes() -> None:
    content = [image_block("image/png", PNG), {"type": "text", "text": "What is it?"}]
    parse_messages_request(anthropic_body(messages=[{"role": "user", "content": content}]))


@pytest.mark.parametrize("stop", ["\n", " \t", ""])
def test_the_mock_refuses_a_stop_sequence_of_whitespace_alone(stop: str) -> None:
    body = anthropic_body(
        messages=[{"role": "user", "content": "Hi"}], stop_sequences=["END", stop]
    )
    with pytest.raises(InvalidRequestError) as refused:
        parse_messages_request(body)
    assert str(refused.value) == "stop_sequences: each stop sequence must contain non-whitespace"


@pytest.fixture(scope="module")
async def claude_on_vertex(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """The anthropic SDK's Vertex client, holding a token of the mock's Vertex."""
    key_file: Path = tmp_path_factory.mktemp("gcp") / "key.json"
    mock: Vertex
    async with vertex_mock(key_file) as mock:
        token = await refresh(credentials(mock.account.path))
        async with AsyncAnthropicVertex(
            region=REGION,
            project_id=PROJECT,
            access_token=token,
            base_url=f"{mock.url}/v1",
            max_retries=0,
        ) as client:
            yield client


async def test_the_mocks_vertex_refuses_an_image_by_url_as_vertex_does(
    claude_on_vertex: AsyncAnthropicVertex,
) -> None:
    # Claude on Vertex takes images as bytes; Anthropic's own API also fetches URLs.
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    content: Any = [{"type": "text", "text": "What is it?"}, image]
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude_on_vertex.messages.create(
            model="claude-sonnet-4-5@20250929",
            max_tokens=50,
            messages=[{"role": "user", "content": content}],
            extra_body=VERTEX_BODY,
        )
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.content.1.image.source.base64.data: "
            "URL sources are not supported",
        },
    }
