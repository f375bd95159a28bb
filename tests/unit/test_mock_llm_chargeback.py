"""The mock's behaviours for chargeback and evaluations: cached prompt tokens, JSON answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from openai.types.shared_params import ResponseFormatJSONSchema

from extproc.mock_llm import bedrock_api
from extproc.mock_llm.faults import FaultSpecError, parse_fault
from extproc.mock_llm.json_reply import instance
from tests.unit.mock_helpers import anthropic_message

MESSAGES: list[Any] = [{"role": "user", "content": "Classify: I love it"}]
CACHED = {"x-mock-fault": "cached=5"}


async def test_openai_reports_cached_prompt_tokens_when_asked(openai_client: AsyncOpenAI) -> None:
    plain = await openai_client.chat.completions.create(model="m", messages=MESSAGES)
    cached = await openai_client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        extra_headers=CACHED,
    )
    assert plain.usage is not None and plain.usage.prompt_tokens_details is None
    assert cached.usage is not None and cached.usage.prompt_tokens_details is not None
    assert cached.usage.prompt_tokens_details.cached_tokens == 5
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens


async def test_anthropic_reports_cache_reads_apart_from_input(
    anthropic_client: AsyncAnthropic,
) -> None:
    plain = await anthropic_message(anthropic_client, MESSAGES)
    cached = await anthropic_message(
        anthropic_client, MESSAGES, headers={"x-mock-fault": "cached=1000"}
    )
    # Never more than the whole prompt.
    assert cached.usage.cache_read_input_tokens == plain.usage.input_tokens
    assert cached.usage.input_tokens == 0


def test_bedrock_reports_cache_reads_apart_from_input() -> None:
    reply = bedrock_api.Reply(["a", "b"], "end_turn", 10, cached_tokens=4)
    assert reply.usage() == {
        "inputTokens": 6, "outputTokens": 2, "totalTokens": 12, "cacheReadInputTokens": 4,
    }  # fmt: skip


def test_cached_must_be_a_count() -> None:
    assert parse_fault("cached=3").cached_tokens == 3
    with pytest.raises(FaultSpecError, match="cached"):
        parse_fault("cached=-1")


async def test_json_object_answers_are_json(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format={"type": "json_object"},
    )
    assert json.loads(answer.choices[0].message.content or "") == {
        "reply": "Mock reply to: Classify: I love it"
    }


SENTIMENT: dict[str, object] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "sarcastic": {"type": ["boolean", "null"]},
    },
    "required": ["sentiment", "confidence"],
}


async def test_json_schema_answers_follow_the_schema_streamed_too(
    openai_client: AsyncOpenAI,
) -> None:
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": SENTIMENT},
    }
    stream = await openai_client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format=response_format,
        stream=True,
    )
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )
    assert json.loads(text) == {
        "sentiment": "positive",
        "confidence": 0,
        "keywords": ["Mock reply to: Classify: I love it"],
        "sarcastic": True,
    }


def test_schema_instances_cover_nesting_and_choices() -> None:
    schema = {"anyOf": [{"type": "integer", "minimum": 3}, {"type": "string"}]}
    assert instance(schema, "t") == 3
    assert instance({"type": "array", "minItems": 2, "items": {"const": 1}}, "t") == [1, 1]


def test_schema_instances_follow_refs_to_nested_models() -> None:
    # What pydantic writes for a model holding other models: $defs and $ref pointers.
    line = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 2}}}
    schema = {
        "$defs": {"Line": line, "a/b": {"const": "escaped"}},
        "type": "object",
        "properties": {
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "first": {"anyOf": [{"$ref": "#/$defs/Line"}, {"type": "null"}]},
            "odd": {"$ref": "#/$defs/a~1b"},
            "elsewhere": {"$ref": "other.json#/Line"},
        },
    }
    assert instance(schema, "t") == {
        "lines": [{"qty": 2}],
        "first": {"qty": 2},
        "odd": "escaped",
        "elsewhere": "t",  # a reference the mock cannot follow is read as no schema
    }
    # A recursive schema ends at the depth bound rather than looping.
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    assert "child" in instance(tree, "t")
