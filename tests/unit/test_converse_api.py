"""What the gateway reads of a Bedrock Converse request: the operation its path names,
the body's shape, the completion allowance a hard cap lowers, the prompt estimate, and
the route's enrichment in Converse's own blocks."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from extproc.config.guard_model import EnrichmentConfig
from extproc.converse_api import (
    OperationNotServedError,
    cap_completion,
    check_converse_body,
    completion_allowance,
    estimate_prompt_tokens,
    operation,
)
from extproc.errors import BadRequestError, NotFoundError
from extproc.guardrails.enrichment import enrich

MESSAGES = [{"role": "user", "content": [{"text": "Hello there"}]}]
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE = "arn:aws:bedrock:us-east-1:1:inference-profile/us.x"
MAX_TOKENS = "inferenceConfig.maxTokens"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/model/{quote(HAIKU, safe='')}/converse", (HAIKU, False)),
        ("/model/haiku/converse-stream", ("haiku", True)),
        # An ARN is one segment: the SDK encodes its slashes.
        (f"/model/{quote(PROFILE, safe='')}/converse", (PROFILE, False)),
        # Mounted under another prefix (an endpoint_url with a path).
        ("/guarded/model/haiku/converse?x=1", ("haiku", False)),
    ],
)  # fmt: skip
def test_the_path_names_the_model_and_whether_it_streams(
    path: str, expected: tuple[str, bool]
) -> None:
    assert operation(path) == expected


def test_other_bedrock_operations_are_named_as_not_served() -> None:
    with pytest.raises(OperationNotServedError) as refused:
        operation("/model/haiku/converse-stream-bidirectional")
    assert refused.value.status == 404
    assert "'converse-stream-bidirectional'" in refused.value.message
    assert "Converse" in refused.value.message and "InvokeModel" in refused.value.message
    with pytest.raises(NotFoundError):
        operation("/model/converse")
    with pytest.raises(NotFoundError):
        operation("/model/haiku/chat")
    with pytest.raises(NotFoundError):
        operation("/elsewhere/haiku/converse")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": []}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages[0].content"),
        ({"messages": MESSAGES, "system": "be brief"}, "system"),
        ({"messages": MESSAGES, "inferenceConfig": []}, "inferenceConfig"),
        ({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 0}}, MAX_TOKENS),
        ({"messages": MESSAGES, "inferenceConfig": {"maxTokens": True}}, MAX_TOKENS),
    ],
)  # fmt: skip
def test_a_malformed_body_is_refused_naming_its_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        check_converse_body(body, max_messages=100)
    assert refused.value.param == param


def test_too_many_messages_are_refused() -> None:
    with pytest.raises(BadRequestError):
        check_converse_body({"messages": MESSAGES * 3}, max_messages=2)


def test_the_allowance_is_max_tokens_and_a_cap_lowers_or_sets_it() -> None:
    body: dict[str, Any] = {"messages": MESSAGES, "inferenceConfig": {"maxTokens": 500}}
    assert completion_allowance(body, 4096) == 500
    assert cap_completion(body, 800) is False  # already within the cap
    assert cap_completion(body, 100) is True
    assert body["inferenceConfig"] == {"maxTokens": 100}

    bare: dict[str, Any] = {"messages": MESSAGES}
    assert completion_allowance(bare, 4096) == 4096
    assert cap_completion(bare, 64) is True
    assert bare["inferenceConfig"] == {"maxTokens": 64}


def test_the_estimate_counts_system_messages_tool_results_and_definitions() -> None:
    small = estimate_prompt_tokens({"messages": MESSAGES})
    system = [{"text": "x" * 400}]
    assert estimate_prompt_tokens({"messages": MESSAGES, "system": system}) == small + 100
    result = {"toolResult": {"toolUseId": "t1", "content": [{"text": "y" * 800}]}}
    with_result = [*MESSAGES, {"role": "user", "content": [result]}]
    assert estimate_prompt_tokens({"messages": with_result}) > small + 200
    spec = {"toolSpec": {"name": "lookup", "description": "z" * 400, "inputSchema": {"json": {}}}}
    tools = {"messages": MESSAGES, "toolConfig": {"tools": [spec]}}
    assert estimate_prompt_tokens(tools) >= small + 100


def test_enrichment_adds_converse_blocks_to_system_and_the_user_turns() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": [{"text": "first"}]},
            {"role": "assistant", "content": [{"text": "reply"}]},
            {"role": "user", "content": [{"text": "last"}]},
        ],
        "system": [{"text": "client's system"}],
    }
    enrichment = EnrichmentConfig.model_validate(
        {
            "prepend": [
                {"role": "system", "content": "Policy for {user_id}."},
                {"role": "user", "content": "Context."},
            ],
            "append": [{"role": "user", "content": "Answer briefly."}],
        }
    )
    enrich(body, enrichment, {"user_id": "alice"}, anthropic=False, converse=True)
    assert body["system"] == [{"text": "Policy for alice."}, {"text": "client's system"}]
    assert body["messages"][0]["content"] == [{"text": "Context."}, {"text": "first"}]
    assert body["messages"][1]["content"] == [{"text": "reply"}]
    assert body["messages"][2]["content"] == [{"text": "last"}, {"text": "Answer briefly."}]
