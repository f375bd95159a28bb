"""What the openai client gets from each Claude the gateway translates to (Anthropic's own
API, Vertex AI's rawPredict, Bedrock's Converse) and what reaches them, through the real
Envoy, gateway and mock providers.

- Images: OpenAI reads an inline image's format from its bytes and takes a data URL labelled
  loosely (``image/jpg``, a screenshot's PNG sent as ``image/jpeg``); Claude's APIs take the
  format the request names, spelled their way, and refuse bytes of another format. Claude on
  Vertex takes no image by URL at all.
- Stop sequences: Anthropic refuses one of whitespace alone (``"\\n"``).
- A tool conversation (call, result, answer), whole and streamed, and what every chunk of a
  translated stream shares: one id, one ``created``, usage on the last chunk alone.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    mock_requests,
    running_stack,
    write_config,
)
from tests.integration.mock_vertex import vertex_provider, vertex_requests
from tests.integration.tool_script import (
    OUTPUT_TOKENS,
    QUESTION,
    SCRIPT,
    TIME,
    WEATHER,
    ask_the_turn,
    assert_billed_as_reported,
    assert_streamed_calls,
    assert_whole_answer_calls,
    send_the_results,
    stream_the_turn,
)

KEY = "team1-key"
# Claude through each API the gateway translates an OpenAI client's request to.
ON_ANTHROPIC = "claude-3-5-haiku-latest"
ON_VERTEX = "sonnet-vertex"
ON_BEDROCK = "haiku"
CLAUDES = [
    pytest.param(ON_ANTHROPIC, id="anthropic"),
    pytest.param(ON_VERTEX, id="vertex"),
    pytest.param(ON_BEDROCK, id="bedrock"),
]
# The first bytes of a PNG and of a JPEG image.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The default config (Claude on the mock's Anthropic and Bedrock) with Claude on the
    mock's Vertex AI too."""
    raw = default_config()
    raw["providers"].append(vertex_provider())
    raw["models"].append(
        {"name": ON_VERTEX, "provider": "vertex", "upstream_model": "claude-sonnet-4-5@20250929"}
    )
    workdir = tmp_path_factory.mktemp("translation-review")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=30.0)


def image_part(label: str, image: bytes) -> dict[str, Any]:
    url = f"data:{label};base64,{base64.b64encode(image).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def sent_body(stack: LocalStack) -> dict[str, Any]:
    """The body of the last request a mock provider received."""
    body: dict[str, Any] = orjson.loads(mock_requests(stack)[-1]["body"])
    return body


def sent_image_formats(body: dict[str, Any]) -> list[str]:
    """The format each image block of the first turn names, Anthropic's way or Converse's."""
    formats = []
    for block in body["messages"][0]["content"]:
        if block.get("type") == "image":
            formats.append(block["source"]["media_type"].removeprefix("image/"))
        elif "image" in block:
            formats.append(block["image"]["format"])
    return formats


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CLAUDES)
def test_each_claude_gets_the_images_as_the_format_their_bytes_are(
    stack: LocalStack, model: str
) -> None:
    # What OpenAI takes: a JPEG labelled image/jpg, a PNG labelled image/jpeg. Sent as
    # labelled, Anthropic refuses both and Bedrock the second ("does not match").
    content: Any = [
        {"type": "text", "text": "What are these?"},
        image_part("image/jpg", JPEG),
        image_part("image/jpeg", PNG),
    ]
    stream = client(stack).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: What are these?"
    assert sent_image_formats(sent_body(stack)) == ["jpeg", "png"]


def test_an_image_by_url_for_claude_on_vertex_is_refused_before_vertex(
    stack: LocalStack,
) -> None:
    # Vertex's Claude answers "URL sources are not supported", after the quota counted the
    # request; Bedrock's Converse is refused the same way by the gateway itself.
    before = len(vertex_requests(stack))
    content: Any = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).chat.completions.create(
            model=ON_VERTEX, messages=[{"role": "user", "content": content}]
        )
    assert refused.value.status_code == 400
    assert refused.value.param == "messages[0].content[1].image_url.url"
    assert "data URL" in refused.value.message
    assert len(vertex_requests(stack)) == before, "nothing reaches Vertex"


# --- stop sequences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [pytest.param(ON_ANTHROPIC, id="anthropic"), pytest.param(ON_VERTEX, id="vertex")]
)
def test_a_stop_sequence_of_whitespace_alone_for_claude_is_refused_naming_stop(
    stack: LocalStack, model: str
) -> None:
    # Anthropic refuses it with a 400 about `stop_sequences`, a field the client never sent.
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Name a colour."}], stop=["\n"]
        )
    assert refused.value.status_code == 400
    assert refused.value.param == "stop"
    assert len(mock_requests(stack)) == before, "nothing reaches the provider"


# --- a tool conversation -----------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_tool_conversation_with_claude_on_vertex_round_trips(
    stack: LocalStack, gateway_log: GatewayLog, streamed: bool
) -> None:
    openai_client = client(stack)
    completion: Any
    if streamed:
        events, completion, request_id = stream_the_turn(openai_client, ON_VERTEX)
        assert_streamed_calls(events, completion, id_prefix="toolu_")
        calls: Any = completion.choices[0].message.tool_calls
    else:
        completion, request_id = ask_the_turn(openai_client, ON_VERTEX)
        calls = assert_whole_answer_calls(completion, id_prefix="toolu_")
    assert_billed_as_reported(completion, gateway_log, request_id)

    answer = send_the_results(openai_client, ON_VERTEX, completion.choices[0].message, calls)

    assert answer.choices[0].finish_reason == "stop"
    sent = orjson.loads(vertex_requests(stack)[-1]["body"])
    assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]
    assert [(b["type"], b["tool_use_id"]) for b in sent["messages"][2]["content"]] == [
        ("tool_result", calls[0].id),
        ("tool_result", calls[1].id),
    ]


@pytest.mark.parametrize("model", CLAUDES)
def test_every_chunk_of_a_translated_stream_is_one_completion_with_usage_last(
    stack: LocalStack, model: str
) -> None:
    # The SDK's helpers and frameworks key chunks by id; a client that asked for usage
    # reads it from the last chunk, and "usage": null on every other.
    stream = client(stack).chat.completions.create(
        model=model,
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=SCRIPT,
    )
    chunks = list(stream)

    assert len({(c.id, c.created, c.model, c.object) for c in chunks}) == 1
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == OUTPUT_TOKENS
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "tool_calls" and not any(reasons[:-1])
