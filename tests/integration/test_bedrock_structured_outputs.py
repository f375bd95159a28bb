"""Structured outputs on a Bedrock route, through the real stack: Envoy, the gateway, its
embedded Valkey and the mock Bedrock (SigV4 checked, ``outputConfig`` checked as Bedrock
checks it), driven by the official ``openai`` client.

A team extracts fields from text with the OpenAI SDK, on a Claude model in its AWS
account. It used to get a 400 ("response_format is not supported for Bedrock models")
although Converse constrains answers to a JSON schema. Now the schema reaches Converse
as ``outputConfig.textFormat`` and the SDK reads the answer into the team's own model,
whole and streamed; ``json_object``, which Converse has no mode for, is refused with a
400 that says what to send, and never reaches Bedrock.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from pydantic import BaseModel

from extproc.devstack import LocalStack
from tests.integration.conftest import mock_requests

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
KEY = "team1-key"
MESSAGES: Any = [{"role": "user", "content": "Invoice 17 from ACME, due in 30 days"}]
# The mock's answer for a string: its usual reply, quoting the question.
VENDOR = "Mock reply to: Invoice 17 from ACME, due in 30 days"
SCHEMA = {
    "type": "object",
    "properties": {"vendor": {"type": "string"}, "due_days": {"type": "integer"}},
    "required": ["vendor", "due_days"],
    "additionalProperties": False,
}


class Invoice(BaseModel):
    vendor: str
    due_days: int


def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/bedrock/{MODEL}", api_key=KEY, max_retries=0)


def last_converse(stack: LocalStack) -> dict[str, Any]:
    """The body of the last Converse or ConverseStream call the mock Bedrock received."""
    calls = [entry for entry in mock_requests(stack) if "/converse" in entry["path"]]
    body: dict[str, Any] = calls[-1]["json"]
    return body


def sent_schema(converse: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON schema Converse was asked for (parsed from its JSON text), and the rest of
    its definition."""
    text_format = converse["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema"
    definition = dict(text_format["structure"]["jsonSchema"])
    return orjson.loads(definition.pop("schema")), definition


def test_a_json_schema_reaches_converse_and_the_answer_is_json_of_it(
    stack: LocalStack,
) -> None:
    completion = client(stack).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "invoice",
                "description": "The invoice's vendor and payment term",
                "schema": SCHEMA,
                "strict": True,
            },
        },
    )

    schema, definition = sent_schema(last_converse(stack))
    assert schema == SCHEMA
    assert definition == {
        "name": "invoice",
        "description": "The invoice's vendor and payment term",
    }
    answer = orjson.loads(completion.choices[0].message.content or "")
    assert answer == {"vendor": VENDOR, "due_days": 0}
    assert completion.choices[0].finish_reason == "stop"


def test_the_sdk_parses_the_answer_into_the_clients_model(stack: LocalStack) -> None:
    completion = client(stack).chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Invoice
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Invoice)
    assert parsed.due_days == 0
    # The SDK names the schema after the model and closes every object, as Bedrock wants.
    schema, definition = sent_schema(last_converse(stack))
    assert definition == {"name": "Invoice"}
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["vendor", "due_days"]


def test_a_streamed_answer_is_parsed_too(stack: LocalStack) -> None:
    with client(stack).chat.completions.stream(
        model=MODEL, messages=MESSAGES, response_format=Invoice
    ) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.parsed == Invoice(vendor=VENDOR, due_days=0)
    converse = last_converse(stack)
    assert sent_schema(converse)[1] == {"name": "Invoice"}


def test_json_object_is_refused_before_it_reaches_bedrock(stack: LocalStack) -> None:
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack).chat.completions.create(
            model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
        )

    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["param"]) == ("invalid_request_error", "response_format")
    assert "json_schema" in error["message"]
    assert len(mock_requests(stack)) == before


class Party(BaseModel):
    name: str
    country: str


class Line(BaseModel):
    item: str
    quantity: int


class NestedInvoice(BaseModel):
    vendor: Party
    lines: list[Line]


def test_a_model_with_nested_models_is_parsed_through_their_refs(stack: LocalStack) -> None:
    # Pydantic puts nested models in $defs and points at them with $ref; the schema goes
    # to Converse as it is, and the answer must follow the references to parse.
    completion = client(stack).chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=NestedInvoice
    )

    parsed = completion.choices[0].message.parsed
    assert parsed == NestedInvoice(
        vendor=Party(name=VENDOR, country=VENDOR), lines=[Line(item=VENDOR, quantity=0)]
    )
    schema, _ = sent_schema(last_converse(stack))
    assert schema["properties"]["vendor"] == {"$ref": "#/$defs/Party"}
    assert set(schema["$defs"]) == {"Party", "Line"}
