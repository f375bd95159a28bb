"""The mock's OpenAI legacy text completions (``POST /v1/completions``), read with the official
openai client and, for the SSE wire the client hides, with raw httpx.

Usage follows docs/mock-llm.md: a prompt's tokens (``\\w+|[^\\w\\s]``, or its token ids) and its
suffix's, no message overhead; output tokens are the pieces of every choice. That is what the
gateway bills, so the tests predict it exactly.
"""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import count_tokens

AUTH = {"Authorization": "Bearer sk-test"}
MODEL = "gpt-3.5-turbo-instruct"
PROMPT = "Say this is a test"
REPLY = "Mock reply to: " + PROMPT


async def test_a_completion_answers_the_prompt_with_its_usage(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=50)
    assert answer.object == "text_completion" and answer.model == MODEL
    [choice] = answer.choices
    assert (choice.text, choice.index, choice.finish_reason) == (REPLY, 0, "stop")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        count_tokens(PROMPT),
        count_tokens(REPLY),
    )


async def test_max_tokens_cuts_the_reply_and_defaults_to_16(openai_client: AsyncOpenAI) -> None:
    cut = await openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    assert cut.choices[0].text == "Mock reply to" and cut.choices[0].finish_reason == "length"
    long_prompt = " ".join(f"w{i}" for i in range(30))
    default = await openai_client.completions.create(model=MODEL, prompt=long_prompt)
    assert default.usage is not None and default.usage.completion_tokens == 16


async def test_a_batch_gets_n_choices_per_prompt_and_echo_repeats_the_prompt(
    openai_client: AsyncOpenAI,
) -> None:
    answer = await openai_client.completions.create(
        model=MODEL, prompt=["one", "two"], n=2, echo=True, suffix=" end", max_tokens=50
    )
    texts = [(c.index, c.text) for c in answer.choices]
    assert texts == [
        (0, "oneMock reply to: one"),
        (1, "oneMock reply to: one"),
        (2, "twoMock reply to: two"),
        (3, "twoMock reply to: two"),
    ]
    assert answer.usage is not None
    # Each prompt's token and the suffix's, read once per prompt.
    assert answer.usage.prompt_tokens == 2 * (1 + 1)
    assert answer.usage.completion_tokens == 4 * count_tokens("Mock reply to: one")


async def test_token_id_prompts_count_one_token_per_id(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.completions.create(
        model=MODEL, prompt=[[7, 8, 9], [1]], max_tokens=50
    )
    assert [c.text for c in answer.choices] == [
        "Mock reply to: <3 token ids>",
        "Mock reply to: <1 token ids>",
    ]
    assert answer.usage is not None and answer.usage.prompt_tokens == 4


async def test_a_stream_sends_text_chunks_and_the_usage_chunk_when_asked(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_tokens(REPLY)


async def test_a_stream_not_asked_for_usage_carries_none(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "stream": True}
    answer = await http.post("/v1/completions", json=body, headers=AUTH)
    events = [e for e in answer.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(b'"usage"' not in event for event in events)
    assert orjson.loads(events[0][6:])["object"] == "text_completion"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": PROMPT, "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "prompt": PROMPT, "suffix": 3}, "suffix"),
    ],
)
async def test_a_body_openai_refuses_is_a_400_naming_the_param(
    http: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    answer = await http.post("/v1/completions", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


async def test_chat_completions_still_reach_chat(openai_client: AsyncOpenAI) -> None:
    answer = await openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    assert answer.object == "chat.completion"


async def test_a_fault_status_is_answered_in_openais_shape(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await openai_client.completions.create(
            model=MODEL, prompt=PROMPT, extra_headers={"x-mock-fault": "status=429"}
        )
