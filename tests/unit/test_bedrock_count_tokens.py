"""Bedrock's CountTokens bodies as AWS SDK clients send them: the ``input`` union checked,
the counted InvokeModel body decoded for the guards and encoded again for Bedrock."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from extproc.bedrock_count_tokens import check_count_body, counted_request, encoded
from extproc.errors import BadRequestError

CLAUDE_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "count me"}],
}
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "count me"}]}]}


def blob(value: Any) -> str:
    return base64.b64encode(orjson.dumps(value)).decode()


def test_the_invoke_model_member_is_decoded_for_the_guards_and_encoded_for_bedrock() -> None:
    body: dict[str, Any] = {"input": {"invokeModel": {"body": blob(CLAUDE_BODY)}}}
    check_count_body(body, max_messages=100, max_depth=64)
    member, request = counted_request(body)
    assert member == "invokeModel" and request == CLAUDE_BODY
    request["messages"][0]["content"] = "masked"  # as a guard's mask writes it

    sent = encoded(body)
    inner = orjson.loads(base64.b64decode(sent["input"]["invokeModel"]["body"]))
    assert inner["messages"][0]["content"] == "masked"
    assert isinstance(body["input"]["invokeModel"]["body"], dict)  # left as it was


def test_the_converse_member_is_read_as_a_converse_body() -> None:
    body: dict[str, Any] = {"input": {"converse": dict(CONVERSE)}}
    check_count_body(body, max_messages=100, max_depth=64)
    assert counted_request(body) == ("converse", CONVERSE)
    assert encoded(body) is body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": {}}, "input"),
        ({"input": {"converse": CONVERSE, "invokeModel": {"body": "e30="}}}, "input"),
        ({"input": {"prompt": "x"}}, "input"),
        ({"input": {"converse": "x"}}, "input.converse"),
        ({"input": {"converse": {"messages": []}}}, "messages"),
        ({"input": {"invokeModel": {"body": 5}}}, "input.invokeModel.body"),
        ({"input": {"invokeModel": {"body": "not base64!"}}}, "input.invokeModel.body"),
        ({"input": {"invokeModel": {"body": blob([1, 2])}}}, "input.invokeModel.body"),
        ({"input": {"invokeModel": {"body": blob({"messages": "x"})}}}, "messages"),
    ],
)
def test_malformed_counts_are_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        check_count_body(body, max_messages=100, max_depth=64)
    assert refused.value.status == 400
    assert refused.value.param == param


def test_a_counted_body_may_not_nest_deeper_than_a_request_body() -> None:
    deep: Any = "x"
    for _ in range(80):
        deep = [deep]
    body = {"input": {"invokeModel": {"body": blob({**CLAUDE_BODY, "metadata": deep})}}}
    with pytest.raises(BadRequestError) as refused:
        check_count_body(body, max_messages=100, max_depth=64)
    assert "nests deeper" in refused.value.message
