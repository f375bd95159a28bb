"""A hard-capped token budget holds for prompts made of tool output and documents.

Through the real Envoy, gateway and Valkey, with the official ``anthropic`` and
``openai`` clients.
The hard cap gives an answer what the budget has left after the prompt's estimate;
a prompt whose tool results or documents the estimate did not read reserved next to
nothing, so the answer got the whole budget and the bill overran it by the prompt.

The mock provider counts only text blocks as input (docs/mock-llm.md), where
Anthropic bills tool results and documents too; so what a provider bills for the
passage is counted here with the mock's own tokenizer, added to the usage it reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import mock_requests, running_stack

MODEL = "claude-3-5-haiku-latest"
KEYS = {"agent": "agent-secret-key", "reader": "reader-secret-key"}
AGENT_BUDGET = 1600
READER_BUDGET = 600
QUOTAS = f"""
quotas:
  rules:
    - name: agent-budget
      subject: api_key
      match: agent
      tokens_per_hour: {AGENT_BUDGET}
      hard_cap: true
    - name: reader-budget
      subject: api_key
      match: reader
      tokens_per_hour: {READER_BUDGET}
      hard_cap: true
"""
# A tool's output, a retrieved document: about 670 tokens by the mock's tokenizer
# (a word or a punctuation mark each), about 1,000 by the gateway's characters / 4.
PASSAGE = (
    "The quarterly report shows revenue growth across every region, led by the "
    "northern division, while operating costs stayed flat year over year. "
) * 28
SEARCH_TOOL: Any = {
    "name": "search",
    "description": "Search the company's reports.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def estimate_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("quota-estimate")
    keys = "".join(f"    - {{id: {name}, key: {secret}}}\n" for name, secret in KEYS.items())
    text = DEFAULT_CONFIG.read_text().replace("  api_keys:\n", "  api_keys:\n" + keys, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTAS)
    with running_stack(workdir, config) as running:
        yield running


def client_of(stack: LocalStack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=None,
        default_headers={"x-api-key": KEYS[key]},
        max_retries=0,
    )


def test_an_agent_turn_of_tool_output_cannot_overrun_a_hard_cap(
    estimate_stack: LocalStack,
) -> None:
    """The agent sends back a large tool result and asks for 1,024 tokens; the mock would
    write them all. The gateway leaves the answer only what the prompt did not use."""
    client = client_of(estimate_stack, "agent")
    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[SEARCH_TOOL],
        messages=[
            {"role": "user", "content": "What does the report say?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look that up."},
                    {"type": "tool_use", "id": "toolu_01", "name": "search", "input": {"q": "Q3"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": PASSAGE}],
            },
        ],
        extra_headers={"x-mock-fault": "chunks=1024"},
    )
    # What a provider that reads the tool result bills: the budget holds.
    billed = message.usage.input_tokens + count_tokens(PASSAGE) + message.usage.output_tokens
    assert billed <= AGENT_BUDGET
    # ...because the gateway lowered the completion the client asked for.
    forwarded = mock_requests(estimate_stack)[-1]["json"]["max_tokens"]
    assert forwarded < 1024
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == forwarded


def test_a_document_larger_than_the_whole_budget_is_refused(estimate_stack: LocalStack) -> None:
    """The document alone is more than the budget: no answer could fit, so the request is
    refused before it reaches the provider, as a long text prompt is."""
    client = client_of(estimate_stack, "reader")
    before = len(mock_requests(estimate_stack))
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "Quarterly report",
                            "source": {"type": "text", "media_type": "text/plain", "data": PASSAGE},
                        },
                        {"type": "text", "text": "Summarise this."},
                    ],
                }
            ],
        )
    assert count_tokens(PASSAGE) > READER_BUDGET
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert "Prompt too large for the token budget" in message
    assert "rule 'reader-budget'" in message
    assert len(mock_requests(estimate_stack)) == before


@pytest.mark.parametrize(
    ("messages", "extra_body"),
    [
        # vLLM's documents, which its RAG chat templates write into the prompt.
        (
            [{"role": "user", "content": "Summarise the report."}],
            {"documents": [{"title": "Quarterly report", "text": PASSAGE}]},
        ),
        # A bare string among the parts, which vLLM reads as a text part.
        ([{"role": "user", "content": [PASSAGE, "Summarise this."]}], {}),
    ],
    ids=["vllm-documents", "bare-string-part"],
)
def test_a_prompt_the_estimate_once_skipped_is_refused_by_a_hard_cap(
    estimate_stack: LocalStack, messages: Any, extra_body: dict[str, Any]
) -> None:
    """An OpenAI client's prompt in parts only OpenAI-compatible servers read, larger than
    the whole budget: before, it reserved a few tokens and went to the provider."""
    client = openai.OpenAI(
        base_url=f"{estimate_stack.base_url}/v1", api_key=KEYS["reader"], max_retries=0
    )
    before = len(mock_requests(estimate_stack))
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=100, messages=messages, extra_body=extra_body
        )
    message = refused.value.body["message"]  # type: ignore[index]
    assert "Prompt too large for the token budget" in message
    assert "rule 'reader-budget'" in message
    assert len(mock_requests(estimate_stack)) == before
