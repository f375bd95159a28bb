"""What each Bedrock model accepts, through the real stack: Envoy, the gateway, Valkey and
the mock, which refuses what Bedrock refuses for each model (``bedrock_api.MODEL_RULES``),
driven by the official OpenAI client.

- A system message works on every documented alias (``/bedrock/titan``, ``haiku``,
  ``llama``) and on Mistral 7B / Mixtral by id: Titan and those Mistral models take no
  Converse ``system``, so the gateway puts its text at the start of the first user turn.
- What the gateway cannot make acceptable reaches the client as a 400 with Bedrock's reason:
  tools for Titan or Llama 3, images for a model without vision, ``max_tokens`` above the
  model's limit. ``n`` > 1 and remote image URLs are refused by the gateway itself.
- Claude 4.5 refuses ``temperature`` and ``top_p`` together: the gateway sends the
  temperature only, as it does for Anthropic's own API.
"""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import GatewayLog, mock_requests

KEY = "team1-key"
SYSTEM = "Be brief."
PROMPT: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Translate me"}]
TOOLS: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def client(stack: LocalStack, prefix: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEY, max_retries=0)


def ask(stack: LocalStack, prefix: str, *, stream: bool, **fields: Any) -> tuple[str, str]:
    """The answer's text and request id, streamed or not."""
    fields.setdefault("messages", PROMPT)
    completions = client(stack, prefix).chat.completions
    if not stream:
        raw = completions.with_raw_response.create(model="ignored-by-path", **fields)
        return raw.parse().choices[0].message.content or "", raw.headers["x-request-id"]
    with completions.with_streaming_response.create(
        model="ignored-by-path", stream=True, **fields
    ) as response:
        chunks = list(response.parse())
        request_id = response.headers["x-request-id"]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), request_id


def refusal(stack: LocalStack, prefix: str, *, stream: bool, **fields: Any) -> dict[str, Any]:
    """The OpenAI error body of a request the client gets a 400 for."""
    with pytest.raises(openai.BadRequestError) as caught:
        ask(stack, prefix, stream=stream, **fields)
    assert caught.value.status_code == 400
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    return body


# --- system prompts ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("prefix", "takes_system"),
    [
        ("/bedrock/titan", False),
        ("/bedrock/haiku", True),
        ("/bedrock/llama", True),
        ("/bedrock/mistral.mistral-7b-instruct-v0:2", False),
        ("/bedrock/mistral.mixtral-8x7b-instruct-v0:1", False),
    ],
)
def test_a_system_message_works_on_every_bedrock_model(
    stack: LocalStack, gateway_log: GatewayLog, prefix: str, takes_system: bool, stream: bool
) -> None:
    # Bedrock (and the mock) answer Titan's and Mistral 7B's `system` with a 400
    # ValidationException: the old gateway sent it, and the client got that 400.
    text, request_id = ask(stack, prefix, stream=stream)

    sent = mock_requests(stack)[-1]["json"]
    if takes_system:
        assert text == "Mock reply to: Translate me"
        assert sent["system"] == [{"text": SYSTEM}]
    else:
        # The model read the instructions, at the start of the conversation.
        assert text == f"Mock reply to: {SYSTEM}\n\nTranslate me"
        assert "system" not in sent
        assert sent["messages"] == [
            {"role": "user", "content": [{"text": f"{SYSTEM}\n\nTranslate me"}]}
        ]
    [line] = gateway_log.for_request(request_id)
    assert line["http_status_code"] == 200
    assert line["completion_tokens"] == count_tokens(text)


def test_system_text_goes_before_the_first_user_turn_of_a_conversation(
    stack: LocalStack,
) -> None:
    messages: Any = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "second"},
    ]

    text, _ = ask(stack, "/bedrock/titan", stream=False, messages=messages)

    assert text == "Mock reply to: second"
    sent = mock_requests(stack)[-1]["json"]
    # Every system and developer message, wherever it stood, as Converse's `system` would.
    assert sent["messages"][0] == {
        "role": "user",
        "content": [{"text": f"{SYSTEM}\n\nAnswer in French.\n\nfirst"}],
    }
    assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]


# --- tools, images, limits: Bedrock's reason, as a 400 ------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("prefix", ["/bedrock/titan", "/bedrock/llama"])
def test_tools_for_a_model_without_tool_use_get_bedrocks_reason(
    stack: LocalStack, prefix: str, stream: bool
) -> None:
    messages: Any = [{"role": "user", "content": "look it up"}]

    error = refusal(stack, prefix, stream=stream, messages=messages, tools=TOOLS)

    assert error["message"] == "This model doesn't support tool use."
    assert (error["type"], error["code"]) == ("invalid_request_error", "ValidationException")


def test_tool_choice_none_sends_no_tools_so_titan_answers(stack: LocalStack) -> None:
    messages: Any = [{"role": "user", "content": "no tools"}]

    text, _ = ask(
        stack, "/bedrock/titan", stream=False, messages=messages, tools=TOOLS, tool_choice="none"
    )

    assert text == "Mock reply to: no tools"
    assert "toolConfig" not in mock_requests(stack)[-1]["json"]


def test_max_tokens_above_the_models_limit_gets_bedrocks_reason(stack: LocalStack) -> None:
    error = refusal(stack, "/bedrock/haiku", stream=False, max_tokens=5000)

    assert "exceeds the model limit of 4096" in error["message"]
    assert error["code"] == "ValidationException"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_n_above_one_is_refused_by_the_gateway(stack: LocalStack, stream: bool) -> None:
    sent = len(mock_requests(stack))

    error = refusal(stack, "/bedrock/haiku", stream=stream, n=2)

    assert error["param"] == "n"
    assert len(mock_requests(stack)) == sent


def image_message(url: str) -> Any:
    parts = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts}]


def test_an_image_data_url_reaches_converse_as_an_image_block(stack: LocalStack) -> None:
    text, _ = ask(stack, "/bedrock/haiku", stream=False, messages=image_message(PNG_URL))

    assert text == "Mock reply to: describe"
    [_, image] = mock_requests(stack)[-1]["json"]["messages"][0]["content"]
    assert image["image"]["format"] == "png"
    assert base64.b64decode(image["image"]["source"]["bytes"]) == PNG


def test_a_remote_image_url_is_refused_by_the_gateway(stack: LocalStack) -> None:
    sent = len(mock_requests(stack))

    error = refusal(
        stack, "/bedrock/haiku", stream=False, messages=image_message("https://x.test/a.png")
    )

    assert error["param"] == "messages[0].content[1].image_url.url"
    assert "data URL" in error["message"]
    assert len(mock_requests(stack)) == sent


def test_an_image_for_a_model_without_vision_gets_bedrocks_reason(stack: LocalStack) -> None:
    error = refusal(stack, "/bedrock/titan", stream=False, messages=image_message(PNG_URL))

    assert error["message"] == "This model doesn't support the image field for user messages."


# --- sampling: Claude 4.5 takes temperature or top_p, not both ---------------------------

CLAUDE_45 = "/bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_claude_4_5_answers_a_client_that_sets_temperature_and_top_p(
    stack: LocalStack, stream: bool
) -> None:
    # Bedrock answers both together with a 400 for Claude Sonnet and Haiku 4.5; many
    # OpenAI clients and frameworks set both.
    text, _ = ask(stack, CLAUDE_45, stream=stream, temperature=0.3, top_p=0.9)

    assert text == "Mock reply to: Translate me"
    assert mock_requests(stack)[-1]["json"]["inferenceConfig"] == {"temperature": 0.3}


def test_top_p_alone_is_sent_to_claude_4_5(stack: LocalStack) -> None:
    ask(stack, CLAUDE_45, stream=False, top_p=0.9)

    assert mock_requests(stack)[-1]["json"]["inferenceConfig"] == {"topP": 0.9}
