"""The completion allowance of an InvokeModel body of each model family: the quota
reserves the limit the body names, and a hard cap lowers it where the client wrote it,
or writes the family's own field into a body that names none (docs/quotas.md).

Before, Amazon Nova's ``inferenceConfig.maxTokens``, Cohere Command's ``max_tokens``
and gpt-oss's ``max_completion_tokens`` were not read: every such call reserved
``quotas.default_max_tokens``, so a hard-capped budget with 200 tokens left refused a
request for 10 ("about 0 prompt tokens leave no room for an answer"), and a hard cap
could not bound the answer.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.bedrock_invoke_bodies import estimate_prompt_tokens
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.quota_helpers import capped_runtime, used_tokens

AUTH = {"authorization": "Bearer team1-key"}
ASK = "Write a haiku about the sea, please."
NOVA_MESSAGES = [{"role": "user", "content": [{"text": ASK}]}]
OPENAI_MESSAGES = [{"role": "user", "content": ASK}]
NOVA = "amazon.nova-lite-v1:0"

# (model id, the client's body naming an allowance of 300, where it names it)
NAMED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (NOVA, {"messages": NOVA_MESSAGES, "inferenceConfig": {"maxTokens": 300, "topK": 20}},
     ("inferenceConfig", "maxTokens")),
    # Nova's first pages (and code copied from them) name it max_new_tokens.
    ("amazon.nova-pro-v1:0",
     {"schemaVersion": "messages-v1", "messages": NOVA_MESSAGES,
      "inferenceConfig": {"max_new_tokens": 300, "top_p": 0.9}},
     ("inferenceConfig", "max_new_tokens")),
    ("us.amazon.nova-2-lite-v1:0",
     {"messages": NOVA_MESSAGES, "inferenceConfig": {"maxTokens": 300}},
     ("inferenceConfig", "maxTokens")),
    ("cohere.command-r-plus-v1:0",
     {"message": ASK, "chat_history": [{"role": "USER", "message": "Hello"}],
      "max_tokens": 300, "temperature": 0.3},
     ("max_tokens",)),
    ("cohere.command-text-v14", {"prompt": ASK, "max_tokens": 300}, ("max_tokens",)),
    ("openai.gpt-oss-120b-1:0",
     {"messages": OPENAI_MESSAGES, "max_completion_tokens": 300},
     ("max_completion_tokens",)),
    ("openai.gpt-oss-20b-1:0", {"messages": OPENAI_MESSAGES, "max_tokens": 300},
     ("max_tokens",)),
    ("us.deepseek.r1-v1:0", {"prompt": ASK, "max_tokens": 300, "stop": ["\n\n"]},
     ("max_tokens",)),
    ("ai21.jamba-1-5-large-v1:0",
     {"messages": OPENAI_MESSAGES, "max_tokens": 300, "top_p": 0.9}, ("max_tokens",)),
    ("writer.palmyra-x5-v1:0", {"messages": OPENAI_MESSAGES, "max_tokens": 300},
     ("max_tokens",)),
    # The families read before, and Claude's body, read as /v1/messages.
    ("meta.llama3-8b-instruct-v1:0", {"prompt": ASK, "max_gen_len": 300}, ("max_gen_len",)),
    ("mistral.mistral-7b-instruct-v0:2", {"prompt": ASK, "max_tokens": 300}, ("max_tokens",)),
    ("amazon.titan-text-express-v1",
     {"inputText": ASK, "textGenerationConfig": {"maxTokenCount": 300, "topP": 0.9}},
     ("textGenerationConfig", "maxTokenCount")),
]  # fmt: skip

# (model id, a body naming no allowance, the field a hard cap writes into it)
UNNAMED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (NOVA, {"messages": NOVA_MESSAGES}, ("inferenceConfig", "maxTokens")),
    (NOVA, {"messages": NOVA_MESSAGES, "inferenceConfig": {"temperature": 0.2}},
     ("inferenceConfig", "maxTokens")),
    ("cohere.command-r-v1:0", {"message": ASK}, ("max_tokens",)),
    ("ai21.jamba-1-5-mini-v1:0", {"messages": OPENAI_MESSAGES}, ("max_tokens",)),
    ("openai.gpt-oss-120b-1:0", {"messages": OPENAI_MESSAGES}, ("max_completion_tokens",)),
    ("meta.llama3-8b-instruct-v1:0", {"prompt": ASK}, ("max_gen_len",)),
    ("amazon.titan-text-express-v1", {"inputText": ASK},
     ("textGenerationConfig", "maxTokenCount")),
]  # fmt: skip


def invoke_path(model: str) -> str:
    """The path boto3's invoke_model calls, the model id's colon escaped."""
    return f"/model/{quote(model, safe='')}/invoke"


async def send(
    quota_store: QuotaStore, budget: int, path: str, body: bytes
) -> ext.ProcessingResponse:
    """The gateway's answer to key team1's request body, its hard-capped daily budget
    ``budget`` tokens (quotas.default_max_tokens: 1000)."""
    runtime, _ = capped_runtime(quota_store, budget)
    await runtime.start()  # the provider's AWS signer
    try:
        answers = await run_stream(
            Processor(lambda: runtime, default_stages()),
            [request_headers(path, headers=AUTH), request_body(body)],
        )
    finally:
        await runtime.close()
    return answers[-1]


async def invoke(
    quota_store: QuotaStore, budget: int, model: str, body: bytes
) -> ext.ProcessingResponse:
    return await send(quota_store, budget, invoke_path(model), body)


def sent(answer: ext.ProcessingResponse) -> dict[str, Any] | None:
    """The body the gateway sent on, when it changed the client's; None when the
    client's bytes went as they were."""
    assert answer.WhichOneof("response") == "request_body", answer
    mutation = answer.request_body.response.body_mutation
    if not mutation.body:
        return None
    result: dict[str, Any] = orjson.loads(mutation.body)
    return result


def read(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        body = body[name]
    return body


def written(body: dict[str, Any], path: tuple[str, ...], value: int) -> dict[str, Any]:
    """``body`` with ``value`` at ``path``."""
    expected = copy.deepcopy(body)
    *parents, name = path
    holder = expected
    for parent in parents:
        holder = holder.setdefault(parent, {})
    holder[name] = value
    return expected


@pytest.mark.parametrize(("model", "body", "path"), NAMED)
async def test_the_reservation_is_the_limit_the_body_names(
    quota_store: QuotaStore, model: str, body: dict[str, Any], path: tuple[str, ...]
) -> None:
    answer = await invoke(quota_store, 100_000, model, orjson.dumps(body))

    assert sent(answer) is None  # nothing to lower: the client's bytes
    # The request never ended: its reservation is still held whole.
    assert await used_tokens(quota_store, 100_000) == estimate_prompt_tokens(body) + 300


@pytest.mark.parametrize(("model", "body", "path"), NAMED)
async def test_a_budget_near_its_end_admits_a_request_that_fits(
    quota_store: QuotaStore, model: str, body: dict[str, Any], path: tuple[str, ...]
) -> None:
    raw = orjson.dumps(written(body, path, 10), option=orjson.OPT_INDENT_2)
    budget = estimate_prompt_tokens(body) + 20  # far below quotas.default_max_tokens

    answer = await invoke(quota_store, budget, model, raw)

    assert sent(answer) is None  # admitted, the client's bytes unchanged


@pytest.mark.parametrize(("model", "body", "path"), NAMED)
async def test_a_hard_cap_lowers_the_field_the_client_sent(
    quota_store: QuotaStore, model: str, body: dict[str, Any], path: tuple[str, ...]
) -> None:
    budget = estimate_prompt_tokens(body) + 120

    answer = await invoke(quota_store, budget, model, orjson.dumps(body))

    # That field alone, lowered where it stands: no second name beside it.
    assert sent(answer) == written(body, path, 120)


@pytest.mark.parametrize(("model", "body", "path"), UNNAMED)
async def test_a_hard_cap_writes_the_familys_own_field_into_a_body_naming_none(
    quota_store: QuotaStore, model: str, body: dict[str, Any], path: tuple[str, ...]
) -> None:
    budget = estimate_prompt_tokens(body) + 120

    answer = await invoke(quota_store, budget, model, orjson.dumps(body))

    assert sent(answer) == written(body, path, 120)


async def test_nova_naming_both_reserves_the_larger_and_a_cap_lowers_both(
    quota_store: QuotaStore,
) -> None:
    body = {"messages": NOVA_MESSAGES, "inferenceConfig": {"maxTokens": 40, "max_new_tokens": 300}}
    prompt = estimate_prompt_tokens(body)
    await invoke(quota_store, 100_000, NOVA, orjson.dumps(body))
    assert await used_tokens(quota_store, 100_000) == prompt + 300

    # What the first request holds, and room for this one's prompt and 100 more.
    budget = (prompt + 300) + prompt + 100
    capped_body = sent(await invoke(quota_store, budget, NOVA, orjson.dumps(body)))
    assert capped_body is not None
    assert capped_body["inferenceConfig"] == {"maxTokens": 40, "max_new_tokens": 100}


async def test_a_model_of_no_known_family_is_admitted_only_with_room_for_the_default(
    quota_store: QuotaStore,
) -> None:
    """Nova Canvas takes an image request: a maxTokens written there would be Bedrock's
    400, so its body is never written, and it needs the whole default."""
    model = "amazon.nova-canvas-v1:0"
    body = {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": ASK}}
    prompt = estimate_prompt_tokens(body)

    answer = await invoke(quota_store, prompt + 1000, model, orjson.dumps(body))
    assert sent(answer) is None

    # Refused for good (the budget never has room for it): not a throttle boto3 retries.
    refused = await invoke(quota_store, prompt + 999, model, orjson.dumps(body))
    assert refused.immediate_response.status.code == 400
    headers = {
        h.header.key: h.header.raw_value for h in refused.immediate_response.headers.set_headers
    }
    assert headers["x-amzn-errortype"] == b"ServiceQuotaExceededException"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # Claude's InvokeModel body is read as /v1/messages: max_tokens.
        (invoke_path("anthropic.claude-3-haiku-20240307-v1:0"),
         {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300,
          "messages": [{"role": "user", "content": ASK}]},
         ("max_tokens",)),
        # Converse: inferenceConfig.maxTokens.
        (f"/model/{quote(NOVA, safe='')}/converse",
         {"messages": NOVA_MESSAGES, "inferenceConfig": {"maxTokens": 300}},
         ("inferenceConfig", "maxTokens")),
    ],
)  # fmt: skip
async def test_claudes_invoke_body_and_converse_are_read_and_lowered_as_before(
    quota_store: QuotaStore, path: str, body: dict[str, Any], field: tuple[str, ...]
) -> None:
    raw = orjson.dumps(body)
    assert sent(await send(quota_store, 100_000, path, raw)) is None
    reserved = await used_tokens(quota_store, 100_000)
    assert 300 < reserved < 320  # the body's 300 and the prompt's estimate

    # What the first request holds, and 130 more: its prompt and what the cap leaves.
    lowered = sent(await send(quota_store, reserved + 130, path, raw))
    assert lowered is not None and 100 < read(lowered, field) < 130


async def test_a_titan_allowance_of_zero_is_reserved_and_kept_as_zero(
    quota_store: QuotaStore,
) -> None:
    """Titan Text takes a maxTokenCount of 0 (its least): the answer generates nothing.
    Before, 0 read as no allowance: the default was reserved, and a hard cap wrote the
    budget's remainder in its place, so the client got, and paid for, an answer it had
    asked not to get."""
    model = "amazon.titan-text-express-v1"
    body = {"inputText": ASK, "textGenerationConfig": {"maxTokenCount": 0}}
    prompt = estimate_prompt_tokens(body)

    assert sent(await invoke(quota_store, prompt + 120, model, orjson.dumps(body))) is None
    assert await used_tokens(quota_store, prompt + 120) == prompt


async def test_a_refusal_for_an_answer_the_cap_cannot_bound_names_the_room_it_needs(
    quota_store: QuotaStore,
) -> None:
    """The body for a model an application inference profile's ARN hides is of no
    family the gateway can tell: under a hard cap it needs room for the whole
    quotas.default_max_tokens (1,000). Its 429 used to say "about 3 prompt tokens leave
    no room for an answer in 200 tokens per day", which reads as nonsense to a client
    that sent a one-line prompt."""
    body = {"messages": [{"role": "user", "content": ASK}], "max_tokens": 10}
    prompt = estimate_prompt_tokens(body)
    profile = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"

    answer = await invoke(quota_store, 200, profile, orjson.dumps(body))

    # Refused for good: Bedrock's ServiceQuotaExceededException, not a throttle.
    assert answer.immediate_response.status.code == 400
    message = orjson.loads(answer.immediate_response.body)["message"]
    assert message == (
        "Request too large for the token budget of api_key 'team1' (rule 'team-cap'):"
        f" about {prompt} prompt tokens and the 1000 tokens its answer needs at the least"
        " do not fit in 200 tokens per day"
    )
