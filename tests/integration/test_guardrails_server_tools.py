"""Anthropic's server-tool results meet the guards, through the real Envoy with the SDK.

What Claude's server tools returned (a fetched page, a run's output) and what an MCP
server returned come in an answer's own blocks; in a stream each comes whole in its
``content_block_start``, no delta. The stream guard read deltas only: an address in such
a block reached the client unmasked, and a refused word unrefused. The mock starts its
answer with the blocks the test asks for (``x-mock-result-blocks``), as Claude does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import guarded_config, running_stack, write_config

KEY = "team1-key"
MODEL = "claude-3-5-haiku-latest"
POLICY = {
    "name": "answers",
    "response": [
        {"name": "secret-out", "literals": ["hunter2"]},
        {"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"},
    ],
}
RUN: dict[str, Any] = {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_01",
       "content": {"type": "bash_code_execution_result", "stdout": "owner=jane@example.com\n",
                   "stderr": "", "return_code": 0, "content": []}}  # fmt: skip
FETCH = {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_02",
         "content": {"type": "web_fetch_result", "url": "https://example.com/notes",
                     "content": {"type": "document", "title": "Notes", "source": {
                         "type": "text", "media_type": "text/plain",
                         "data": "Write to bob@example.com."}}}}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guardrails-server-tools")
    config = write_config(workdir, guarded_config(POLICY, "anthropic-messages"))
    with running_stack(workdir, config) as running:
        yield running


def claude(stack: LocalStack, *blocks: dict[str, Any]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url,
        api_key=KEY,
        max_retries=0,
        timeout=30.0,
        default_headers={"x-mock-result-blocks": orjson.dumps(list(blocks)).decode()},
    )


def test_addresses_in_streamed_tool_results_reach_the_client_masked(stack: LocalStack) -> None:
    with claude(stack, RUN, FETCH).messages.stream(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Run it."}]
    ) as stream:
        answer = stream.get_final_message().model_dump()
    run, fetch = answer["content"][0], answer["content"][1]
    assert run["content"]["stdout"] == "owner=<EMAIL>\n"
    assert run["content"]["return_code"] == 0
    assert fetch["content"]["content"]["source"]["data"] == "Write to <EMAIL>."
    assert fetch["content"]["url"] == "https://example.com/notes"
    assert answer["content"][2]["type"] == "text"


def test_a_refused_word_in_a_streamed_tool_result_ends_the_stream(stack: LocalStack) -> None:
    leaked = {**RUN, "content": {**RUN["content"], "stdout": "PASSWORD=hunter2\n"}}
    seen: list[str] = []
    client = claude(stack, leaked)
    asked: Any = [{"role": "user", "content": "Run it."}]
    with (
        pytest.raises(anthropic.APIStatusError) as refused,
        client.messages.stream(model=MODEL, max_tokens=20, messages=asked) as stream,
    ):
        for event in stream:
            seen.append(event.model_dump_json())
    assert "secret-out" in str(refused.value)
    assert not any("hunter2" in event for event in seen), "the result reached the client"
