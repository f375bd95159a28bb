"""The prompt estimate counts every text the request guards read of a chat or Messages body.

The guards were taught to read parts the estimate skipped: a bare string among a
message's content parts (vLLM reads it as a text part), Mistral's ``thinking`` parts sent
back, Claude's ``thinking`` blocks in a tool loop's history, the reasoning an
OpenAI-compatible client sends back (``reasoning_content``, ``reasoning``,
``reasoning_details``) and a message's ``name``. A prompt written in them reserved four
tokens a message: a per-minute token limit of 500 admitted 1,000 tokens of prompt, and a
hard cap left the answer room the prompt had taken. The settlement, from the provider's
usage, was right; the admission was not.

What the model does not read as text is still not counted: a thinking block's signature,
``redacted_thinking`` (encrypted, and only Claude writes it), an encrypted reasoning
detail's ``data``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.guardrails.content import request_slots
from extproc.quota.estimate import CHARS_PER_TOKEN, estimate_prompt_tokens
from extproc.quota.store import QuotaStore, Reservation
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_quota_estimate import PASSAGE_BODIES
from tests.unit.test_quota_review import ANTHROPIC_AUTH, OPENAI_AUTH, gateway, refusal, runtime_with

# About 1,000 tokens of prose, the whole prompt of each body below.
PASSAGE = (
    "The quarterly report shows revenue growth across every region, led by the "
    "northern division, while operating costs stayed flat year over year. "
) * 28
PASSAGE_TOKENS = len(PASSAGE) // CHARS_PER_TOKEN
# The few short turns, the message overhead and the names around the passage.
SLACK = 40
# A blob the model does not read as text (a signature, encrypted reasoning).
OPAQUE = "EqQBCkYIBRgCKkA" * 300
QUESTION = {"role": "user", "content": "Go on."}


def openai(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [*messages, QUESTION]}


def anthropic(*messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 10,
        "messages": [*messages, QUESTION],
    }


def assistant(*parts: Any, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(parts), **fields}


CLAUDE_TOOL_LOOP = anthropic(
    {"role": "user", "content": "What does the report say?"},
    assistant(
        {"type": "thinking", "thinking": PASSAGE, "signature": "sig"},
        {"type": "tool_use", "id": "toolu_01", "name": "read", "input": {}},
    ),
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01"}]},
)

# Each body carries PASSAGE in one place only, a place the guards read.
HIDDEN = {
    "a bare string part": openai({"role": "user", "content": [PASSAGE]}),
    "a bare string in a system message's parts": openai({"role": "system", "content": [PASSAGE]}),
    "Mistral's thinking part sent back": openai(
        assistant(
            {"type": "thinking", "thinking": [{"type": "text", "text": PASSAGE}]},
            {"type": "text", "text": "Done."},
        )
    ),
    "Claude's thinking in a tool loop": CLAUDE_TOOL_LOOP,
    "a bare string in Anthropic's system": {**anthropic(), "system": [PASSAGE]},
    "a bare string in a tool result's content": anthropic(
        {"role": "user", "content": "Read it."},
        assistant({"type": "tool_use", "id": "t", "name": "read", "input": {}}),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": [PASSAGE]}],
        },
    ),
    "reasoning_content sent back": openai(assistant("Done.", reasoning_content=PASSAGE)),
    "reasoning sent back": openai(assistant("Done.", reasoning=PASSAGE)),
    "reasoning_details text sent back": openai(
        assistant("Done.", reasoning_details=[{"type": "reasoning.text", "text": PASSAGE}])
    ),
    "reasoning_details summary sent back": openai(
        assistant("Done.", reasoning_details=[{"type": "reasoning.summary", "summary": PASSAGE}])
    ),
    "a message's name": openai({"role": "user", "content": "Hi.", "name": PASSAGE}),
    "an MCP server's name": anthropic(
        assistant(
            {"type": "mcp_tool_use", "id": "m", "name": "n", "server_name": PASSAGE, "input": {}}
        )
    ),
}


@pytest.mark.parametrize("body", HIDDEN.values(), ids=HIDDEN.keys())
def test_a_prompt_in_a_part_the_guards_read_is_estimated(body: dict[str, Any]) -> None:
    assert PASSAGE_TOKENS <= estimate_prompt_tokens(body) <= PASSAGE_TOKENS + SLACK


@pytest.mark.parametrize(
    "body",
    [*HIDDEN.values(), *PASSAGE_BODIES.values()],
    ids=[*HIDDEN.keys(), *PASSAGE_BODIES.keys()],
)
def test_the_estimate_counts_at_least_what_the_guards_read(body: dict[str, Any]) -> None:
    """One rule for both: text a guard reads is text the model reads, and it is billed."""
    guarded = sum(slot.chars for slot in request_slots(body))
    assert estimate_prompt_tokens(body) >= guarded // CHARS_PER_TOKEN


NOT_TEXT = {
    "a thinking block's signature": anthropic(
        assistant({"type": "thinking", "thinking": "Hm.", "signature": OPAQUE})
    ),
    "redacted thinking": anthropic(assistant({"type": "redacted_thinking", "data": OPAQUE})),
    "an encrypted reasoning detail": openai(
        assistant("Done.", reasoning_details=[{"type": "reasoning.encrypted", "data": OPAQUE}])
    ),
    "a signed reasoning detail's signature": openai(
        assistant(
            "Done.",
            reasoning_details=[{"type": "reasoning.text", "text": "Hm.", "signature": OPAQUE}],
        )
    ),
    "a Mistral thinking chunk that is no text": openai(
        assistant({"type": "thinking", "thinking": [{"type": "image", "text": OPAQUE}, "x"]})
    ),
}


@pytest.mark.parametrize("body", NOT_TEXT.values(), ids=NOT_TEXT.keys())
def test_signatures_and_encrypted_reasoning_are_not_counted(body: dict[str, Any]) -> None:
    assert estimate_prompt_tokens(body) < SLACK


MINUTE_LIMIT = """
quotas:
  rules:
    - {name: minute, subject: api_key, match: team1, tokens_per_minute: %d, hard_cap: %s}
"""
CHAT = ("/v1/chat/completions", OPENAI_AUTH)
MESSAGES = ("/v1/messages", ANTHROPIC_AUTH)
THROUGH = {
    "a bare string part": CHAT,
    "Mistral's thinking part sent back": CHAT,
    "reasoning_content sent back": CHAT,
    "Claude's thinking in a tool loop": MESSAGES,
}


async def send(
    quota_store: QuotaStore, quotas: str, name: str
) -> tuple[int, dict[str, Any]] | None:
    """Send ``HIDDEN[name]`` as key team1 under ``quotas``: the gateway's refusal, or None
    when it let the request go."""
    path, auth = THROUGH[name]
    processor, _ = gateway(quota_store, quotas)
    answers = await run_stream(
        processor,
        [request_headers(path, headers=auth), request_body(orjson.dumps(HIDDEN[name]))],
    )
    return refusal(answers[-1])


async def reserved(quota_store: QuotaStore, quotas: str) -> int:
    """The tokens key team1 holds of its minute (a zero reservation reads them, refused
    when they are past the limit)."""
    runtime = runtime_with(quota_store, quotas)
    limits = runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
    held = await quota_store.reserve(limits, 0)
    return held.used[0] if isinstance(held, Reservation) else held.used


@pytest.mark.parametrize("name", THROUGH)
async def test_a_hard_capped_minute_refuses_a_prompt_hidden_in_such_parts(
    quota_store: QuotaStore, name: str
) -> None:
    found = await send(quota_store, MINUTE_LIMIT % (500, "true"), name)

    assert found is not None, f"about {PASSAGE_TOKENS} tokens went past a 500-token minute"
    assert found[0] == 429
    assert "Prompt too large" in found[1]["error"]["message"]


@pytest.mark.parametrize("name", THROUGH)
async def test_a_minute_limit_holds_the_hidden_prompt(quota_store: QuotaStore, name: str) -> None:
    """Without a hard cap the request that crosses the limit goes, holding its estimate:
    the next one of the minute is refused (before, each held 14 tokens and both went)."""
    quotas = MINUTE_LIMIT % (500, "false")

    assert await send(quota_store, quotas, name) is None
    # The prompt's estimate and the 10 tokens of max_tokens.
    assert await reserved(quota_store, quotas) == estimate_prompt_tokens(HIDDEN[name]) + 10
    assert await reserved(quota_store, quotas) >= PASSAGE_TOKENS + 10
    found = await send(quota_store, quotas, name)
    assert found is not None and found[0] == 429
