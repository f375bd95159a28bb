"""The quota's prompt estimate counts every text the provider reads and bills.

The reservation (and a hard cap's completion allowance) is sized from this estimate
before the provider answers. Text the estimate skips is billed anyway: a prompt made
of it would reserve next to nothing, and one large request could overrun a token
limit or a hard-capped budget. Each body below is what a client really sends: an
agent loop, a RAG prompt with documents, tool definitions.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.quota.estimate import (
    CHARS_PER_TOKEN,
    PER_MESSAGE_OVERHEAD,
    cap_completion,
    estimate_prompt_tokens,
)

# A retrieved passage, a tool's output: about 1,000 tokens of prose.
PASSAGE = (
    "The quarterly report shows revenue growth across every region, led by the "
    "northern division, while operating costs stayed flat year over year. "
) * 28
PASSAGE_TOKENS = len(PASSAGE) // CHARS_PER_TOKEN
# A tool's JSON Schema, as agents send dozens of them.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        f"field_{i}": {"type": "string", "description": f"The {i}th search filter, as text."}
        for i in range(40)
    },
    "required": ["field_0"],
}
SCHEMA_TOKENS = len(orjson.dumps(SCHEMA)) // CHARS_PER_TOKEN
# What a few short turns, the message overhead and the glue JSON may add on top.
SLACK = 60


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def anthropic(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-0", "max_tokens": 1024, "messages": list(messages), **fields}


def openai(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages), **fields}


TOOL_USE = {
    "role": "assistant",
    "content": [
        {"type": "text", "text": "Let me look that up."},
        {"type": "tool_use", "id": "toolu_01", "name": "search", "input": {"q": "report"}},
    ],
}
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "search", "arguments": '{"q": "report"}'},
        }
    ],
}

# Each body carries PASSAGE (or SCHEMA) in one place the provider reads.
PASSAGE_BODIES = {
    "anthropic tool_result, string content": anthropic(
        user({"type": "text", "text": "What does the report say?"}),
        TOOL_USE,
        user({"type": "tool_result", "tool_use_id": "toolu_01", "content": PASSAGE}),
    ),
    "anthropic tool_result, nested text blocks": anthropic(
        user({"type": "text", "text": "What does the report say?"}),
        TOOL_USE,
        user(
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01",
                "content": [{"type": "text", "text": PASSAGE}],
            }
        ),
    ),
    "anthropic tool_result holding a search_result": anthropic(
        user({"type": "text", "text": "What does the report say?"}),
        TOOL_USE,
        user(
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01",
                "content": [
                    {
                        "type": "search_result",
                        "source": "https://intranet.example/report",
                        "title": "Quarterly report",
                        "content": [{"type": "text", "text": PASSAGE}],
                    }
                ],
            }
        ),
    ),
    "anthropic plain-text document": anthropic(
        user(
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": PASSAGE},
            },
            {"type": "text", "text": "Summarise this."},
        )
    ),
    "anthropic content document": anthropic(
        user(
            {
                "type": "document",
                "source": {"type": "content", "content": [{"type": "text", "text": PASSAGE}]},
            },
            {"type": "text", "text": "Summarise this."},
        )
    ),
    "anthropic document title and context": anthropic(
        user(
            {
                "type": "document",
                "source": {"type": "url", "url": "https://example.com/report.pdf"},
                "title": PASSAGE[: len(PASSAGE) // 2],
                "context": PASSAGE[len(PASSAGE) // 2 :],
            },
            {"type": "text", "text": "Summarise this."},
        )
    ),
    "anthropic search_result block": anthropic(
        user(
            {
                "type": "search_result",
                "source": "https://intranet.example/report",
                "title": "Quarterly report",
                "content": [{"type": "text", "text": PASSAGE}],
            },
            {"type": "text", "text": "What changed?"},
        )
    ),
    "anthropic tool_use input": anthropic(
        user({"type": "text", "text": "File the report."}),
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "file", "input": {"text": PASSAGE}}
            ],
        },
        user({"type": "tool_result", "tool_use_id": "toolu_01", "content": "filed"}),
    ),
    "openai tool message": openai(
        {"role": "user", "content": "What does the report say?"},
        TOOL_CALL,
        {"role": "tool", "tool_call_id": "call_1", "content": PASSAGE},
    ),
    "openai tool message, text parts": openai(
        {"role": "user", "content": "What does the report say?"},
        TOOL_CALL,
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": PASSAGE}]},
    ),
    "openai assistant tool_calls arguments": openai(
        {"role": "user", "content": "File the report."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "file", "arguments": orjson.dumps(PASSAGE).decode()},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "filed"},
    ),
    "openai legacy function_call arguments": openai(
        {"role": "user", "content": "File the report."},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "file", "arguments": orjson.dumps(PASSAGE).decode()},
        },
        {"role": "function", "name": "file", "content": "filed"},
    ),
}

SCHEMA_BODIES = {
    "openai tools[].function.parameters": openai(
        {"role": "user", "content": "Find the report."},
        tools=[
            {
                "type": "function",
                "function": {"name": "search", "description": "Search.", "parameters": SCHEMA},
            }
        ],
    ),
    "openai legacy functions[].parameters": openai(
        {"role": "user", "content": "Find the report."},
        functions=[{"name": "search", "description": "Search.", "parameters": SCHEMA}],
    ),
    "anthropic tools[].input_schema": anthropic(
        user({"type": "text", "text": "Find the report."}),
        tools=[{"name": "search", "description": "Search.", "input_schema": SCHEMA}],
    ),
}


@pytest.mark.parametrize("body", PASSAGE_BODIES.values(), ids=PASSAGE_BODIES.keys())
def test_a_prompt_of_tool_output_or_documents_reserves_what_the_provider_bills(
    body: dict[str, Any],
) -> None:
    estimate = estimate_prompt_tokens(body)
    assert PASSAGE_TOKENS <= estimate <= PASSAGE_TOKENS + SLACK


@pytest.mark.parametrize("body", SCHEMA_BODIES.values(), ids=SCHEMA_BODIES.keys())
def test_tool_definitions_are_part_of_the_prompt(body: dict[str, Any]) -> None:
    estimate = estimate_prompt_tokens(body)
    assert SCHEMA_TOKENS <= estimate <= SCHEMA_TOKENS + SLACK


def test_every_tool_definition_counts() -> None:
    tools = [
        {"name": f"tool_{i}", "description": "Search.", "input_schema": SCHEMA} for i in range(5)
    ]
    body = anthropic(user({"type": "text", "text": "Find it."}), tools=tools)
    assert estimate_prompt_tokens(body) >= 5 * SCHEMA_TOKENS


def test_plain_prompts_are_estimated_as_before() -> None:
    """Characters / 4 per message plus its overhead: the figures docs/quotas.md shows."""
    body = openai({"role": "user", "content": "count me"})
    assert estimate_prompt_tokens(body) == 8 // 4 + PER_MESSAGE_OVERHEAD
    system = anthropic(
        user({"type": "text", "text": "x" * 40}), system=[{"type": "text", "text": "y" * 20}]
    )
    assert estimate_prompt_tokens(system) == 40 // 4 + PER_MESSAGE_OVERHEAD + 20 // 4


def test_images_and_pdfs_add_no_text() -> None:
    """Binary sources are no text: their base64 is not the provider's token count."""
    body = anthropic(
        user(
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "A" * 8000},
            },
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": "B" * 8000},
            },
            {"type": "text", "text": "What is this?"},
        )
    )
    assert estimate_prompt_tokens(body) < 20


def test_odd_shapes_are_counted_for_what_they_hold_and_never_raise() -> None:
    """Validation is the provider's; the estimate only reads what it can."""
    blocks: list[Any] = [
        {"type": "tool_result", "tool_use_id": "x", "content": None},
        {"type": "tool_result", "tool_use_id": "y", "content": [None, 3, "loose"]},
        {"type": "document", "source": "not an object", "title": 7},
        {"type": "tool_use", "id": "z", "name": None, "input": "a string input"},
        {"type": "search_result", "content": "loose text"},
        "not a block",
    ]
    body = anthropic(
        {"role": "user", "content": blocks},
        {"role": "assistant", "content": None, "tool_calls": "not a list"},
        {"role": "assistant", "tool_calls": [None, {"function": None}, {"function": {"a": 1}}]},
        tools="not a list",
        functions=[None, 3],
    )
    assert estimate_prompt_tokens(body) >= 3 * PER_MESSAGE_OVERHEAD


def test_a_hard_cap_leaves_no_room_for_a_prompt_of_tool_output() -> None:
    """What the hard cap computes: the budget left minus the prompt estimate. A budget
    the tool output alone fills leaves the answer nothing."""
    body = PASSAGE_BODIES["anthropic tool_result, string content"]
    budget = 500
    assert budget - estimate_prompt_tokens(body) < 1
    body = PASSAGE_BODIES["anthropic tool_result, string content"].copy()
    assert cap_completion(body, 2000 - estimate_prompt_tokens(body))
    assert body["max_tokens"] <= 2000 - PASSAGE_TOKENS


def test_a_schema_deeper_than_orjson_writes_still_counts_its_text() -> None:
    """A deployment may allow deeper bodies than orjson serialises (254 levels)."""
    schema: dict[str, Any] = {"description": PASSAGE}
    for _ in range(300):
        schema = {"items": schema}
    body = anthropic(user({"type": "text", "text": "Go."}), tools=[{"input_schema": schema}])
    assert estimate_prompt_tokens(body) >= PASSAGE_TOKENS


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    # The block types and source types the estimate looks for.
    | st.sampled_from(["text", "tool_result", "tool_use", "document", "search_result", "content"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
KEYS = st.sampled_from(
    ["messages", "content", "type", "text", "tool_calls", "function", "arguments", "name",
     "input", "source", "data", "title", "context", "tools", "functions", "system"]
)  # fmt: skip
SHAPES = st.recursive(
    JSON,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=40,
)


@given(st.dictionaries(KEYS, SHAPES, max_size=5))
def test_no_body_makes_the_estimate_fail(body: dict[str, Any]) -> None:
    """It runs on every admitted request: whatever the client sent, a number, never a 500."""
    assert estimate_prompt_tokens(body) >= 0


def test_a_cap_names_the_allowance_of_the_bodys_api() -> None:
    openai = {"model": "o3-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert cap_completion(openai, 50)
    # OpenAI's reasoning models refuse max_tokens ("Unsupported parameter").
    assert openai["max_completion_tokens"] == 50 and "max_tokens" not in openai
    anthropic = {"model": "claude", "messages": [], "max_tokens": 500}
    assert cap_completion(anthropic, 50, "max_tokens") and anthropic["max_tokens"] == 50
    unnamed = {"model": "claude", "messages": []}
    assert cap_completion(unnamed, 50, "max_tokens") and unnamed == {
        "model": "claude",
        "messages": [],
        "max_tokens": 50,
    }


def test_a_cap_is_not_dodged_by_an_allowance_that_is_no_number() -> None:
    body = {"model": "m", "messages": [], "max_completion_tokens": "lots"}
    assert cap_completion(body, 50)
    assert body["max_completion_tokens"] == 50
    assert not cap_completion({"model": "m", "max_tokens": 10}, 50)  # already below
