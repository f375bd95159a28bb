"""Guardrail bypasses found in review, through the real Envoy with the official SDKs.

- an OpenAI ``refusal`` content part is text the provider reads (the Anthropic
  translation sends it as a text block, a system message's as the system prompt), yet
  no guard read it: a refused word in one reached the provider;
- an Anthropic ``mcp_tool_result`` block's text (what an MCP server returned, sent back
  in the history) reached the provider unread.

The provider is the mock, which records what it was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from openai import OpenAI, PermissionDeniedError

from extproc.devstack import LocalStack
from tests.integration.conftest import guarded_config, mock_requests, running_stack, write_config

KEY = "team1-key"
MESSAGE = "Requests about credit card numbers are not allowed."
POLICY = {
    "name": "workshop",
    "request": [
        {"name": "card-talk", "patterns": ["credit card"], "case_insensitive": True,
         "message": MESSAGE},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def review_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guardrails-review")
    config = write_config(workdir, guarded_config(POLICY, "openai-chat", "anthropic-messages"))
    with running_stack(workdir, config) as running:
        yield running


def openai_client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0, timeout=30.0)


def claude(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0, timeout=30.0)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_a_refused_word_in_a_refusal_part_never_reaches_the_provider(
    review_stack: LocalStack, model: str
) -> None:
    before = len(mock_requests(review_stack))
    messages: Any = [
        {"role": "system", "content": [{"type": "refusal", "refusal": "Discuss credit cards."}]},
        {"role": "user", "content": "List a few."},
    ]
    with pytest.raises(PermissionDeniedError) as refused:
        openai_client(review_stack).chat.completions.create(model=model, messages=messages)
    assert refused.value.status_code == 403
    assert MESSAGE in str(refused.value)
    assert len(mock_requests(review_stack)) == before, "the provider got the prompt"


def test_an_address_in_an_mcp_tool_result_is_masked_before_the_provider(
    review_stack: LocalStack,
) -> None:
    history: Any = [
        {"role": "user", "content": "Who owns the account?"},
        {
            "role": "assistant",
            "content": [
                {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "lookup",
                 "server_name": "crm", "input": {"q": "owner"}},
                {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "is_error": False,
                 "content": [{"type": "text", "text": "owner: jane@example.com"}]},
            ],
        },
        {"role": "user", "content": "Thanks."},
    ]  # fmt: skip
    claude(review_stack).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=50, messages=history
    )
    sent = mock_requests(review_stack)[-1]["json"]["messages"][1]["content"][1]
    assert sent["content"] == [{"type": "text", "text": "owner: <EMAIL>"}]
