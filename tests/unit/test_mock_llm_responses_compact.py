"""The mock's Responses API compaction (``POST /v1/responses/compact``) and token count
(``POST /v1/responses/input_tokens``), read with the official openai client and, for what
the client would not send, with raw httpx.

Counts follow the mock's rules (``extproc.mock_llm.tokens``): ``instructions`` is one more
message before the input, each message costs its tokens + 4, the request 2 more; the
compaction's output tokens are those of the summary, the reply a ``/responses`` call would
get. So the gateway's tests predict both exactly.
"""

from __future__ import annotations

import base64

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import count_tokens

AUTH = {"Authorization": "Bearer sk-test"}
MODEL = "gpt-4o-mini"
FIRST = "Plan a trip to Lisbon."
SECOND = "Add a day in Sintra."
HISTORY = [
    {"role": "user", "content": FIRST},
    {"role": "assistant", "content": [{"type": "output_text", "text": "Day one: Alfama."}]},
    {"role": "user", "content": [{"type": "input_text", "text": SECOND}]},
]
INSTRUCTIONS = "Keep the dates."
INPUT_TOKENS = (count_tokens(INSTRUCTIONS) + 4 + count_tokens(FIRST) + 4) + (
    count_tokens("Day one: Alfama.") + 4 + count_tokens(SECOND) + 4 + 2
)
SUMMARY = "Mock reply to: " + SECOND


async def test_a_compaction_keeps_the_user_messages_then_one_compaction_item(
    openai_client: AsyncOpenAI,
) -> None:
    raw = await openai_client.responses.with_raw_response.compact(
        model=MODEL,
        input=HISTORY,  # type: ignore[arg-type]
        instructions=INSTRUCTIONS,
    )
    compacted = raw.parse()
    assert compacted.object == "response.compaction"
    # As it came: the SDK types output items as a response's (user messages included).
    output = orjson.loads(raw.content)["output"]
    assert [item["type"] for item in output] == ["message", "message", "compaction"]
    assert [item["content"][0]["text"] for item in output[:2]] == [FIRST, SECOND]
    assert base64.b64decode(output[-1]["encrypted_content"]).decode() == SUMMARY
    usage = compacted.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, count_tokens(SUMMARY))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_a_compaction_of_a_stored_response_needs_no_input(
    openai_client: AsyncOpenAI,
) -> None:
    compacted = await openai_client.responses.compact(model=MODEL, previous_response_id="resp_1")
    assert [item.type for item in compacted.output] == ["compaction"]
    assert compacted.usage.input_tokens == 2  # the request's own overhead


@pytest.mark.parametrize("path", ["/v1/responses/compact", "/v1/responses/input_tokens"])
async def test_neither_endpoint_takes_stream(http: httpx.AsyncClient, path: str) -> None:
    body = {"model": MODEL, "input": FIRST, "stream": True}
    answer = await http.post(path, json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unknown_parameter"


async def test_the_no_usage_fault_answers_a_compaction_without_usage(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post(
        "/v1/responses/compact",
        json={"model": MODEL, "input": FIRST},
        headers={**AUTH, "x-mock-fault": "no_usage=1"},
    )
    assert answer.status_code == 200 and answer.json()["usage"] is None


async def test_a_token_count_is_the_input_tokens_a_response_would_report(
    openai_client: AsyncOpenAI,
) -> None:
    counted = await openai_client.responses.input_tokens.count(
        model=MODEL,
        input=HISTORY,  # type: ignore[arg-type]
        instructions=INSTRUCTIONS,
    )
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == INPUT_TOKENS
    response = await openai_client.responses.create(
        model=MODEL,
        input=HISTORY,  # type: ignore[arg-type]
        instructions=INSTRUCTIONS,
    )
    assert response.usage is not None and response.usage.input_tokens == INPUT_TOKENS


async def test_an_injected_status_reaches_the_client(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await openai_client.responses.compact(
            model=MODEL, input=FIRST, extra_headers={"x-mock-fault": "status=429"}
        )
