"""An OpenAI SDK client of Claude marks prompt-cache breakpoints, through the real stack.

LiteLLM-style clients put Anthropic's ``cache_control`` on content parts and messages of
an OpenAI chat request. The gateway carries them to Claude (Anthropic's blocks, Bedrock's
``cachePoint``); the mock caches each marked prefix as Claude does and reports the writes
of the first call and the reads of the next. The client sees the reads in
``prompt_tokens_details.cached_tokens``, and the log line bills both. Before, the
markers were dropped: nothing was ever cached, every call paid the whole prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from tests.integration.conftest import GatewayLog, config_with_keys, running_stack

KEYS = {"cache-anthropic": "cache-anthropic-key-5b7e", "cache-bedrock": "cache-bedrock-key-2f9c"}
RULES = "Review each contract clause against the company's standard terms, and flag risks. " * 40
CONTRACT = "Clause 1: the supplier delivers monthly. Clause 2: payment within 90 days. " * 20
QUESTION = "Is clause 2 fair to us?"
# The mock's count: words and punctuation, + 4 per message (the system prompt is one),
# + 2 per request. A marked prefix counts as a request holding that prefix alone.
SYSTEM_PREFIX = count_tokens(RULES) + 4 + 2
CONTRACT_PREFIX = SYSTEM_PREFIX + count_tokens(CONTRACT) + 4
PROMPT = CONTRACT_PREFIX + count_tokens(QUESTION)  # the question joins the contract's turn
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("cache-breakpoints")
    with running_stack(workdir, config_with_keys(workdir, KEYS)) as running:
        yield running


def litellm_messages() -> list[dict[str, Any]]:
    """LiteLLM's prompt-caching shape: a marked system part (an hour: it rarely changes),
    a marked user message with string content (five minutes), then the question."""
    return [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": RULES, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        },
        {"role": "user", "content": CONTRACT, "cache_control": {"type": "ephemeral"}},
        {"role": "user", "content": QUESTION},
    ]


def test_an_openai_client_of_claude_writes_its_prefix_then_reads_it(stack: LocalStack) -> None:
    key = "cache-anthropic"
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEYS[key], max_retries=0)
    log = GatewayLog(stack.gateway_log)
    seen: list[tuple[Any, dict[str, Any]]] = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-0",
            messages=litellm_messages(),
            max_tokens=50,  # type: ignore[arg-type]
        )
        [line] = log.for_request(raw.headers["x-request-id"])
        seen.append((raw.parse().usage, line))

    (first, first_line), (second, second_line) = seen
    assert first is not None and second is not None
    assert first.prompt_tokens == second.prompt_tokens == PROMPT
    # The first call wrote both prefixes: the system prompt to the 1-hour cache, the
    # contract after it to the 5-minute one.
    assert first.prompt_tokens_details is not None
    assert first.prompt_tokens_details.cached_tokens == 0
    assert (first_line["cached_tokens"], first_line["cache_write_tokens"]) == (0, CONTRACT_PREFIX)
    assert first_line["cache_write_1h_tokens"] == SYSTEM_PREFIX
    # The second read them back, at the cached price, and wrote nothing.
    assert second.prompt_tokens_details is not None
    assert second.prompt_tokens_details.cached_tokens == CONTRACT_PREFIX
    assert (second_line["cached_tokens"], second_line["cache_write_tokens"]) == (CONTRACT_PREFIX, 0)
    assert second_line["cost_usd"] < first_line["cost_usd"]


def test_an_openai_client_of_claude_on_bedrock_caches_through_cache_points(
    stack: LocalStack,
) -> None:
    key = "cache-bedrock"
    client = openai.OpenAI(base_url=f"{stack.base_url}/bedrock", api_key=KEYS[key], max_retries=0)
    log = GatewayLog(stack.gateway_log)
    seen: list[tuple[Any, dict[str, Any]]] = []
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model=BEDROCK_CLAUDE,
            messages=litellm_messages(),  # type: ignore[arg-type]
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            request_id = response.headers["x-request-id"]
            chunks = list(response.parse())
        [line] = log.for_request(request_id)
        seen.append((chunks[-1].usage, line))

    (first, first_line), (second, second_line) = seen
    assert first is not None and second is not None
    assert first.prompt_tokens == second.prompt_tokens == PROMPT
    assert first.prompt_tokens_details is not None
    assert first.prompt_tokens_details.cached_tokens == 0
    assert (first_line["cache_write_tokens"], first_line["cache_write_1h_tokens"]) == (
        CONTRACT_PREFIX,
        SYSTEM_PREFIX,
    )
    assert second.prompt_tokens_details is not None
    assert second.prompt_tokens_details.cached_tokens == CONTRACT_PREFIX
    assert (second_line["cached_tokens"], second_line["cache_write_tokens"]) == (CONTRACT_PREFIX, 0)
