"""Bedrock review through the real stack: Envoy, the gateway, Valkey and the mock, which
checks SigV4 over the request as Envoy delivers it and refuses what Bedrock refuses.

- A provider whose ``base_url`` writes its host with capitals is signed for the host
  Envoy sends (as written), not for botocore's lowercase form.
- A model served through an inference profile ARN (``/`` sent as ``%2F``) is reached.
- OpenAI conversations with consecutive messages of one role, developer messages
  mid-way and several tool results reach Converse as alternating turns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack, Ports
from extproc.mock_llm import count_tokens
from tests.integration.conftest import STARTED, mock_requests

KEY = "team1-key"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-haiku-20240307-v1:0"
)
PROVIDERS = """
  - name: bedrock-capitals
    type: bedrock
    base_url: http://LocalHost:{mock_port}
    aws: {{region: us-east-1, access_key_id: AKIDMOCK, secret_access_key: mock-secret-key}}
"""
MODELS = f"""
  - name: haiku-profile
    provider: mock-bedrock
    upstream_model: {PROFILE_ARN}
"""
ROUTES = """
  - {name: capitals, path_prefix: /capitals, model_from_path: true, provider: bedrock-capitals}
"""


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # The provider's URL names the mock's port, so the ports are chosen before the config.
    workdir = tmp_path_factory.mktemp("bedrock-review")
    ports = Ports.free()
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nproviders:\n", "\nproviders:" + PROVIDERS.format(mock_port=ports.mock))
    text = text.replace("\nmodels:\n", "\nmodels:" + MODELS, 1)
    text = text.replace("\nroutes:\n", "\nroutes:" + ROUTES, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    stack = LocalStack(workdir=workdir, ports=ports, config_path=Path(config))
    STARTED.append(stack)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def client(stack: LocalStack, prefix: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}", api_key=KEY, max_retries=0)


def test_a_host_written_with_capitals_is_signed_as_envoy_sends_it(review: LocalStack) -> None:
    raw = client(review, "/capitals/amazon.nova-micro-v1:0").chat.completions.with_raw_response
    reply = raw.create(model="x", messages=[{"role": "user", "content": "hi there"}]).parse()

    # The old signer signed `localhost:<port>` while Envoy sent `LocalHost:<port>`: the
    # mock (as AWS) refused the signature and the client got a 502.
    assert reply.choices[0].message.content == "Mock reply to: hi there"
    upstream = mock_requests(review)[-1]
    assert upstream["headers"]["host"].startswith("LocalHost:")


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_behind_an_inference_profile_arn_is_served(
    review: LocalStack, stream: bool
) -> None:
    messages: Any = [{"role": "user", "content": "profile please"}]
    openai = client(review, "/v1")
    if stream:
        chunks = list(
            openai.chat.completions.create(
                model="haiku-profile",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        reply = openai.chat.completions.create(model="haiku-profile", messages=messages)
        text, usage = reply.choices[0].message.content or "", reply.usage

    assert text == "Mock reply to: profile please"
    assert usage is not None and usage.completion_tokens == count_tokens(text)
    operation = "converse-stream" if stream else "converse"
    assert mock_requests(review)[-1]["path"] == f"/model/{PROFILE_ARN}/{operation}"


def test_openai_turns_reach_converse_alternating(review: LocalStack) -> None:
    calls = [
        {"id": f"call_{n}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        for n in (1, 2)
    ]
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "developer", "content": "Use the tool."},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
        {"role": "user", "content": "thanks"},
    ]
    tools: Any = [{"type": "function", "function": {"name": "lookup"}}]

    reply = client(review, "/bedrock/haiku").chat.completions.create(
        model="x", messages=messages, tools=tools
    )

    # The mock refuses turns that do not alternate, as Bedrock does.
    assert reply.choices[0].message.content == "Mock reply to: thanks"
    sent = mock_requests(review)[-1]["json"]
    assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]
    assert [block["text"] for block in sent["system"]] == ["Be brief.", "Use the tool."]


def test_blank_assistant_text_before_tool_calls_is_not_sent(review: LocalStack) -> None:
    # Models often answer "\n\n" before their tool calls, and clients send that turn back.
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages: Any = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": "\n\n", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "user", "content": "and?"},
    ]
    tools: Any = [{"type": "function", "function": {"name": "lookup"}}]

    # Bedrock (and the mock) refuse a blank text block with a 400 ValidationException.
    reply = client(review, "/bedrock/haiku").chat.completions.create(
        model="x", messages=messages, tools=tools
    )

    assert reply.choices[0].message.content == "Mock reply to: and?"
    assistant = mock_requests(review)[-1]["json"]["messages"][1]
    assert assistant["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "lookup", "input": {}}}
    ]


def test_an_assistant_turn_that_said_nothing_is_left_out(review: LocalStack) -> None:
    # Claude often answers nothing after a tool result; clients send that turn back.
    messages: Any = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "second"},
    ]

    reply = client(review, "/bedrock/haiku").chat.completions.create(model="x", messages=messages)

    assert reply.choices[0].message.content == "Mock reply to: first second"
    sent = mock_requests(review)[-1]["json"]["messages"]
    assert sent == [{"role": "user", "content": [{"text": "first"}, {"text": "second"}]}]
