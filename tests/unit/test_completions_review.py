"""Review of OpenAI's legacy text completions (POST /v1/completions) through the processor:
what a client of OpenAI's API may send and what the quota holds for it.

- ``max_tokens: 0`` is OpenAI's way to score a prompt (``echo: true``, ``logprobs``: the
  prompt's log probabilities, nothing generated), as evaluation harnesses call vLLM and
  OpenAI's base models: it reaches the provider and reserves no completion.
- ``suffix`` is read after the insertion point of every prompt of a batch, and billed
  for each: a hard cap counts it once per prompt.
- A moderation service's key as a Secret holds it (a newline at its end) still
  moderates, and a call that cannot be sent fails as the guard says, never a 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from openai import AsyncOpenAI

from extproc import headers
from extproc.completions_api import estimate_prompt
from extproc.config import GatewayConfig
from extproc.mock_llm import count_tokens
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped, used_tokens
from tests.unit.sse_play import only_line
from tests.unit.test_guard_flow import Gateway, chat, immediate, upstream_body
from tests.unit.test_guardrail_review import Hook, serving

COMPLETIONS = "/v1/completions"
AUTH = {"authorization": "Bearer team1-key"}
PROMPT = "The capital of France is Paris"


def completion(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "prompt": PROMPT, **fields})


def scored_answer(prompt_tokens: int) -> bytes:
    """A prompt scored with ``echo`` and ``max_tokens: 0``: the prompt back, nothing
    generated, as OpenAI (and vLLM) answer it."""
    return orjson.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "text": PROMPT,
                    "index": 0,
                    "logprobs": {"tokens": ["The"], "token_logprobs": [None]},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 0,
                "total_tokens": prompt_tokens,
            },
        }
    )


def sent_body(answer: ext.ProcessingResponse, body: bytes) -> dict[str, Any]:
    """The body the provider got: the gateway's rewrite of the client's, or the client's."""
    if answer.request_body.response.HasField("body_mutation"):
        return upstream_body(answer)
    result: dict[str, Any] = orjson.loads(body)
    return result


def cluster_of(answer: ext.ProcessingResponse) -> str | None:
    for mutation in answer.request_body.response.header_mutation.set_headers:
        if mutation.header.key == headers.CLUSTER:
            return str(mutation.header.raw_value.decode())
    return None


# --- max_tokens: 0, a prompt scored ------------------------------------------------------------


async def test_a_prompt_scored_with_max_tokens_0_reaches_the_provider_and_is_billed(
    processor: Processor, services: Services
) -> None:
    body = completion(max_tokens=0, echo=True, logprobs=1)
    answers = await run_stream(
        processor,
        [
            request_headers(COMPLETIONS, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(scored_answer(6)),
        ],
    )
    # Not the gateway's 400: the provider got it, as sent.
    assert cluster_of(answers[1]) == "provider_mock"
    assert not answers[1].request_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["http_status_code"], line["prompt_tokens"], line["completion_tokens"]) == (
        200,
        6,
        0,
    )


async def test_a_prompt_scored_with_max_tokens_0_reserves_no_completion(
    quota_store: QuotaStore,
) -> None:
    # A batch of 50 prompts to score: the budget holds their prompts, not 50 default
    # allowances (50 x quotas.default_max_tokens, 1000 here) they never generate.
    body = completion(prompt=[PROMPT] * 50, max_tokens=0, echo=True, logprobs=1)
    prompt = estimate_prompt(orjson.loads(body))
    processor, _ = capped(quota_store, prompt + 100)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)]
    )
    assert cluster_of(answers[1]) == "provider_mock"
    assert sent_body(answers[1], body)["max_tokens"] == 0
    # The request never ended: what it holds is its reservation, the prompts alone.
    assert await used_tokens(quota_store, prompt + 100) == prompt


async def test_the_mock_scores_a_prompt_with_max_tokens_0(openai_client: AsyncOpenAI) -> None:
    # make run's provider answers the call as OpenAI does (its max_tokens minimum is 0):
    # the prompt echoed, nothing generated, only the prompt billed.
    scored = await openai_client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    [choice] = scored.choices
    assert (choice.text, choice.finish_reason) == (PROMPT, "length")
    assert scored.usage is not None
    assert (scored.usage.prompt_tokens, scored.usage.completion_tokens) == (
        count_tokens(PROMPT),
        0,
    )


# --- suffix in a batch -------------------------------------------------------------------------


def test_a_batch_estimate_counts_the_suffix_once_per_prompt() -> None:
    suffix = "s" * 400  # 100 tokens at four characters each
    single = estimate_prompt({"prompt": "a" * 40, "suffix": suffix})
    batch = estimate_prompt({"prompt": ["a" * 40] * 10, "suffix": suffix})
    assert batch == 10 * single


@pytest.mark.parametrize("prompt", [["a" * 40] * 10, [[1, 2, 3]] * 10])
async def test_a_hard_cap_leaves_room_for_the_suffix_of_every_prompt(
    quota_store: QuotaStore, prompt: list[Any]
) -> None:
    # Ten prompts filled in the middle before one long suffix: the provider reads (and
    # bills) the suffix ten times, so the room left for the completions is what ten
    # suffixes leave of the budget, not one.
    suffix = "}" * 4000  # 1000 tokens each time it is read
    body = completion(prompt=prompt, suffix=suffix, max_tokens=500)
    billed_prompt = sum(
        (len(p) // 4 if isinstance(p, str) else len(p)) + len(suffix) // 4 for p in prompt
    )
    budget = billed_prompt + 200
    processor, _ = capped(quota_store, budget)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)]
    )
    sent = sent_body(answers[1], body)
    # Ten completions of sent["max_tokens"] each, after the prompts: within the budget.
    assert billed_prompt + 10 * sent["max_tokens"] <= budget


# --- moderation: the key as a Secret gives it ---------------------------------------------------


def moderated_by(port: int, **moderation: Any) -> GatewayConfig:
    """The default config, moderating chat completions through the service on ``port``."""
    guardrails = {
        "moderation": [{"name": "mod", "base_url": f"http://127.0.0.1:{port}/v1", **moderation}],
        "policies": [
            {"name": "moderated", "request": [{"name": "moderation", "moderation": "mod"}]}
        ],
    }
    return config_with(guardrails, {"openai-chat": {"guardrails": "moderated"}})


def passing(_: Any) -> dict[str, Any]:
    return {"results": [{"flagged": False, "categories": {}, "category_scores": {}}]}


async def test_a_moderation_key_ending_in_a_newline_still_moderates() -> None:
    # `api_key: ${OPENAI_API_KEY}` from a Secret written with `echo`: the value ends in a
    # newline, which no header may carry. The key is the text before it, as a key file's is.
    hook = Hook(passing)
    async with serving(hook.handle, "/v1/moderations") as port:
        gateway = Gateway(moderated_by(port, api_key="mod-key\n"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    assert answers[1].HasField("request_body"), answers[1]
    assert upstream_body(answers[1])["messages"] == [{"role": "user", "content": "hello"}]
    assert hook.headers[0].headers["authorization"] == "Bearer mod-key"
    assert gateway.log()["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "pass"}
    ]


async def test_a_moderation_call_that_cannot_be_sent_fails_as_configured_never_a_500() -> None:
    # A key with a control character inside cannot be sent: the guard fails closed (a 503
    # naming the guard) as for any failed call, and the key is in neither answer nor log.
    async with serving(Hook(passing).handle, "/v1/moderations") as port:
        gateway = Gateway(moderated_by(port, api_key="mod\x01key"))
        answers = await gateway.send("/v1/chat/completions", chat("hello"))
    status, error = immediate(answers[-1])
    assert (status, error["error"]["code"]) == (503, "guardrail_unavailable")
    line = gateway.log()
    assert line["guardrails"] == [
        {"guard": "moderation", "phase": "request", "action": "fail_closed"}
    ]
    assert "mod\x01key" not in orjson.dumps(line).decode() + str(error)
