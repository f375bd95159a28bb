"""A structured output's schema in the prompt estimate, as tool definitions are.

The model reads the schema of a structured output, and the providers bill it as input:
OpenAI's ``prompt_tokens`` grow with ``response_format``'s schema (and the Responses
API's ``text.format``), and Claude gets ``output_config.format`` in a system prompt of
its own. The estimate counted tools' JSON and Gemini's ``responseSchema`` but skipped
these, so a schema of 10,000 tokens reserved nothing and a hard cap of 1,000 tokens let
it through. Now it counts as JSON, as tools do, in the reservation and the hard cap.
Bedrock's Converse API likewise: ``outputConfig.textFormat`` (type ``json_schema``,
its ``structure.jsonSchema`` a name, a description and the schema as a JSON string),
which Bedrock bills as input tokens.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.converse_api import estimate_prompt_tokens as estimate_converse_tokens
from extproc.quota.estimate import estimate_prompt_tokens, estimate_responses_tokens
from extproc.quota.store import QuotaStore
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_converse_review import HAIKU, capped_converse
from tests.unit.test_quota_review import ANTHROPIC_AUTH, OPENAI_AUTH, gateway, refusal

DESCRIPTION = "word " * 8_000  # 40,000 characters: about 10,000 tokens
SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": DESCRIPTION,
    "properties": {"summary": {"type": "string"}},
    "required": ["summary"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Summarise."}]
CHAT_FORMAT = {"type": "json_schema", "json_schema": {"name": "summary", "schema": SCHEMA}}
RESPONSES_FORMAT = {"type": "json_schema", "name": "summary", "schema": SCHEMA}
CLAUDE_FORMAT = {"type": "json_schema", "schema": SCHEMA}
# Converse's: the schema is a string of JSON (botocore's JsonSchemaDefinition.schema).
CONVERSE_OUTPUT = {
    "textFormat": {
        "type": "json_schema",
        "structure": {
            "jsonSchema": {
                "name": "summary",
                "description": "A summary.",
                "schema": orjson.dumps(SCHEMA).decode(),
            }
        },
    }
}
CONVERSE_MESSAGES = [{"role": "user", "content": [{"text": "Summarise."}]}]
SCHEMA_TOKENS = 40_000 // 4
CAP = """
quotas:
  rules:
    - {name: cap, subject: api_key, match: team1, tokens_per_day: 1000, hard_cap: true}
"""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", CHAT_FORMAT),
        ("output_config", {"format": CLAUDE_FORMAT, "effort": "low"}),
        ("output_format", CLAUDE_FORMAT),
    ],
    ids=["openai-response-format", "anthropic-output-config", "anthropic-beta-output-format"],
)
def test_the_schema_counts_in_a_chat_or_messages_estimate(field: str, value: Any) -> None:
    bare = estimate_prompt_tokens({"messages": MESSAGES})
    assert estimate_prompt_tokens({"messages": MESSAGES, field: value}) >= bare + SCHEMA_TOKENS


def test_the_schema_counts_in_a_responses_estimate() -> None:
    bare = estimate_responses_tokens({"input": "Summarise."})
    body = {"input": "Summarise.", "text": {"format": RESPONSES_FORMAT}}
    assert estimate_responses_tokens(body) >= bare + SCHEMA_TOKENS


@pytest.mark.parametrize(
    "value",
    [{"type": "json_object"}, {"type": "text"}, "json_schema", {"type": "json_schema"}, None],
)
def test_formats_without_a_schema_add_next_to_nothing(value: Any) -> None:
    bare = estimate_prompt_tokens({"messages": MESSAGES})
    # At most the few characters of the format itself.
    assert estimate_prompt_tokens({"messages": MESSAGES, "response_format": value}) <= bare + 8


@pytest.mark.parametrize(
    ("path", "auth", "body"),
    [
        (
            "/v1/chat/completions",
            OPENAI_AUTH,
            {"model": "gpt-4o-mini", "messages": MESSAGES, "response_format": CHAT_FORMAT},
        ),
        (
            # Translated to Converse's outputConfig, which Bedrock bills as input too.
            "/v1/chat/completions",
            OPENAI_AUTH,
            {"model": "haiku", "messages": MESSAGES, "response_format": CHAT_FORMAT},
        ),
        (
            "/v1/responses",
            OPENAI_AUTH,
            {"model": "gpt-4o-mini", "input": "Summarise.", "text": {"format": RESPONSES_FORMAT}},
        ),
        (
            "/v1/messages",
            ANTHROPIC_AUTH,
            {
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 100,
                "messages": MESSAGES,
                "output_config": {"format": CLAUDE_FORMAT},
            },
        ),
    ],
    ids=["chat", "chat-to-bedrock", "responses", "messages"],
)
async def test_a_hard_cap_counts_the_schema(
    quota_store: QuotaStore, path: str, auth: dict[str, str], body: dict[str, Any]
) -> None:
    processor, _ = gateway(quota_store, CAP)

    answers = await run_stream(
        processor, [request_headers(path, headers=auth), request_body(orjson.dumps(body))]
    )

    found = refusal(answers[-1])
    assert found is not None, "a schema of about 10,000 tokens went past a 1,000-token cap"
    assert found[0] == 429


def test_the_schema_counts_in_a_converse_estimate() -> None:
    bare = estimate_converse_tokens({"messages": CONVERSE_MESSAGES})
    body = {"messages": CONVERSE_MESSAGES, "outputConfig": CONVERSE_OUTPUT}
    assert estimate_converse_tokens(body) >= bare + SCHEMA_TOKENS
    # Its effort alone, or a malformed structure, adds nothing.
    for config in ({"effort": "low"}, {"textFormat": {"type": "json_schema"}}, "json"):
        body = {"messages": CONVERSE_MESSAGES, "outputConfig": config}
        assert estimate_converse_tokens(body) == bare


async def test_a_hard_cap_counts_a_converse_schema(quota_store: QuotaStore) -> None:
    body = {
        "messages": CONVERSE_MESSAGES,
        "inferenceConfig": {"maxTokens": 100},
        "outputConfig": CONVERSE_OUTPUT,
    }

    answers = await capped_converse(quota_store, 1000, HAIKU, body)

    found = refusal(answers[-1])
    assert found is not None, "a schema of about 10,000 tokens went past a 1,000-token cap"
    # Larger than the whole budget, so no retry can pass: Bedrock's quota exception, not
    # a throttle boto3 would retry.
    assert found[0] == 400
    received = {
        h.header.key: h.header.raw_value.decode()
        for h in answers[-1].immediate_response.headers.set_headers
    }
    assert received["x-amzn-errortype"] == "ServiceQuotaExceededException"
