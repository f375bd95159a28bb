"""OpenAI's legacy text completions (POST /v1/completions) through the processor: the body
checks, the provider's request, the usage read from whole answers and streams, the quota,
the guards, and what the log line and the metrics record.

The answers are in OpenAI's wire format: a ``text_completion`` object whose choices carry
``text``, and a stream of ``text_completion`` chunks (``choices[].text``), the usage-only
chunk (``choices: []``) when usage was asked for, then ``data: [DONE]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.completions_api import estimate_prompt, generated_choices
from extproc.config import GatewayConfig, load_config
from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig as GatewayConfigModel
from extproc.processor import Processor
from extproc.quota.estimate import CHARS_PER_TOKEN
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    sample,
)
from extproc.translators.generated_text import generated_chars
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped, used_tokens
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate, upstream_body
from tests.unit.test_request_log import with_log

COMPLETIONS = "/v1/completions"
ROUTE = "openai-completions"
AUTH = {"authorization": "Bearer team1-key"}
PROMPT = "Say this is a test"
DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")


def completion(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "prompt": PROMPT, **fields})


def answer(*texts: str, usage: tuple[int, int] | None = (5, 7), finish: str = "stop") -> bytes:
    """A whole ``text_completion``, one choice per text, as OpenAI sends it."""
    document: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
            for i, text in enumerate(texts)
        ],
    }
    if usage is not None:
        document["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return orjson.dumps(document)


def chunk(text: str, finish: str | None = None, *, asked: bool = True) -> bytes:
    """One streamed ``text_completion`` chunk; ``asked``: the request asked for usage, so
    every chunk carries ``"usage": null`` as OpenAI's do."""
    event: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    if asked:
        event["usage"] = None
    return b"data: " + orjson.dumps(event) + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    event = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


DONE = b"data: [DONE]\n\n"
STREAM = [chunk("This"), chunk(" is a"), chunk(" test.", "stop"), usage_chunk(5, 4), DONE]


def error_of(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    status, body = immediate(answer)
    return status, body["error"]


async def whole(
    processor: Processor, body: bytes, reply: bytes, path: str = COMPLETIONS
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(body),
            response_headers(200),
            response_body(reply),
        ],
    )


def set_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        h.header.key: h.header.raw_value.decode()
        for h in answer.request_body.response.header_mutation.set_headers
    }


# --- routes ------------------------------------------------------------------------------------


async def test_a_completion_goes_to_the_providers_completions_endpoint(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(completion())]
    )
    mutated = set_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: the client's path is the provider's, body untouched.
    assert ":path" not in mutated
    assert not answers[1].request_body.response.HasField("body_mutation")


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/openai/v1/completions", "openai-prefix-completions"),
        ("/openai/completions", "openai-bare-prefix-completions"),
    ],
)
async def test_an_sdk_based_at_the_openai_prefix_reaches_completions(
    processor: Processor, services: Services, path: str, route: str
) -> None:
    answers = await whole(processor, completion(), answer("This is a test."), path)
    assert set_headers(answers[1])[":path"] == "/v1/completions"
    line = only_line(services)
    assert (line["route"], line["http_status_code"]) == (route, 200)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 7)


def test_the_built_in_routes_serve_completions() -> None:
    config = GatewayConfigModel.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-3.5-turbo-instruct", "provider": "openai"}],
        }
    )
    paths = {route.path: (route.name, route.api) for route in config.routes}
    assert paths["/v1/completions"] == ("openai-completions", "openai_completions")
    assert paths["/openai/v1/completions"] == ("openai-prefix-completions", "openai_completions")
    assert paths["/openai/completions"] == ("openai-bare-prefix-completions", "openai_completions")


def test_enrichment_on_a_completions_route_is_a_config_error() -> None:
    # Enrichment adds chat messages, and a completion has none to add them to.
    enrichment = {"prepend": [{"role": "system", "content": "Be brief."}]}
    with pytest.raises(ConfigError, match="enrichment adds chat messages"):
        config_with({}, {ROUTE: {"enrichment": enrichment}})


async def test_a_stream_asks_the_provider_for_usage_the_client_did_not_ask_for(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(COMPLETIONS, headers=AUTH), request_body(completion(stream=True))],
    )
    sent = upstream_body(answers[1])
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["prompt"] == PROMPT


async def test_the_model_is_sent_under_the_providers_name(services: Services) -> None:
    config = load_config("config/gateway.yaml", environ={})
    models = tuple(
        m.model_copy(update={"upstream_model": "gpt-4o-mini-2024-07-18"})
        if m.name == "gpt-4o-mini"
        else m
        for m in config.models
    )
    processor = processor_for(config.model_copy(update={"models": models}), services)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(completion())]
    )
    assert upstream_body(answers[1])["model"] == "gpt-4o-mini-2024-07-18"


# --- the body checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": {"text": "hi"}}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": [1, "two"]}, "prompt"),
        ({"prompt": ["one", 2]}, "prompt[1]"),
        ({"prompt": [[1, 2], []]}, "prompt[1]"),
        ({"prompt": [[1, 2], [3, -4]]}, "prompt[1]"),
        ({"prompt": [True]}, "prompt[0]"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"best_of": 2, "n": 3}, "best_of"),
        ({"best_of": 1.5}, "best_of"),
        ({"suffix": 7}, "suffix"),
        ({"echo": "yes"}, "echo"),
        ({"logprobs": -1}, "logprobs"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ],
)
async def test_a_body_the_gateway_cannot_count_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(completion(**fields))]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")
    line = only_line(services)
    assert line["http_status_code"] == 400 and line["quota_decision"] is None


@pytest.mark.parametrize(
    "prompt",
    ["", ["one", ""], [1, 2, 3], [[1, 2], [3]]],
    ids=["empty-string", "strings", "token-ids", "token-id-arrays"],
)
async def test_every_prompt_shape_reaches_the_provider_as_sent(
    processor: Processor, prompt: Any
) -> None:
    body = completion(prompt=prompt, suffix="\n}", echo=True, logprobs=2, max_tokens=None)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)]
    )
    assert set_headers(answers[1])[headers.CLUSTER] == "provider_mock"
    # Forwarded as the client sent it: no field the gateway does not own is touched.
    assert not answers[1].request_body.response.HasField("body_mutation")


async def test_a_prompt_batch_over_the_message_limit_is_refused() -> None:
    config = parse_config(
        DEFAULT_CONFIG.replace("\nlimits:\n", "\nlimits:\n  max_messages: 2\n", 1), "t", {}
    )
    answers = await run_stream(
        processor_for(config),
        [request_headers(COMPLETIONS, headers=AUTH), request_body(completion(prompt=["a"] * 3))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["param"] == "prompt" and "limit is 2" in error["message"]


@pytest.mark.parametrize(
    ("model", "api"),
    [("claude-3-5-haiku-latest", "anthropic"), ("titan", "bedrock")],
)
async def test_a_model_of_a_provider_without_the_api_is_a_clear_400_before_the_quota(
    processor: Processor, services: Services, model: str, api: str
) -> None:
    answers = await run_stream(
        processor,
        [request_headers(COMPLETIONS, headers=AUTH), request_body(completion(model=model))],
    )
    status, error = error_of(answers[1])
    assert status == 400 and error["code"] == "unsupported_model_for_route"
    assert error["param"] == "model"
    assert f"speaks the {api} API, which has no text completions API" in error["message"]
    assert only_line(services)["quota_decision"] is None


async def test_an_embeddings_model_is_refused_on_the_completions_route(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(COMPLETIONS, headers=AUTH),
            request_body(completion(model="text-embedding-3-small")),
        ],
    )
    status, error = error_of(answers[1])
    assert status == 400 and "/v1/embeddings" in error["message"]


# --- whole answers ------------------------------------------------------------------------------


async def test_a_whole_answer_is_billed_by_its_usage_in_the_log_and_the_metrics(
    processor: Processor, services: Services
) -> None:
    answers = await whole(processor, completion(max_tokens=7), answer("This is", finish="length"))
    assert not answers[-1].response_body.response.HasField("body_mutation")
    line = only_line(services)
    assert (line["route"], line["path"], line["outcome"]) == (ROUTE, COMPLETIONS, "completed")
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (5, 7, 12)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["length"]
    assert line["response_model"] == "gpt-4o-mini-2024-07-18"
    labels = {"api_key_id": "team1", "model": "gpt-4o-mini"}
    assert sample(services, "tokens_consumed_total", token_type="prompt", **labels) == 5
    assert sample(services, "tokens_consumed_total", token_type="completion", **labels) == 7
    operation = {"gen_ai_operation_name": "text_completion", "gen_ai_token_type": "output"}
    assert sample(services, "gen_ai_client_token_usage_sum", **operation) == 7


async def test_a_whole_answer_without_usage_is_charged_its_text(
    processor: Processor, services: Services
) -> None:
    text = "x" * 40
    await whole(processor, completion(), answer(text, usage=None))
    line = only_line(services)
    assert line["usage_estimated"] is True and line["usage_reported"] is False
    assert line["completion_tokens"] == 40 // CHARS_PER_TOKEN
    assert line["prompt_tokens"] == estimate_prompt(orjson.loads(completion()))


async def test_the_prompt_and_the_answer_text_are_logged_when_content_is_on(
    config: GatewayConfig, services: Services
) -> None:
    processor = processor_for(with_log(config, include_content=True), services)
    await whole(processor, completion(suffix=" end"), answer("This is a test."))
    line = only_line(services)
    assert line["prompt"] == [
        {"role": "user", "content": PROMPT},
        {"role": "user", "content": " end"},
    ]
    assert line["completion"] == "This is a test."


# --- streams ------------------------------------------------------------------------------------


async def test_a_client_that_did_not_ask_for_usage_gets_no_usage_chunk(
    processor: Processor, services: Services
) -> None:
    answers = await play_sse(processor, COMPLETIONS, AUTH, completion(stream=True), STREAM)
    received = client_body(STREAM, answers)
    assert b'"usage":{' not in received and b"test." in received
    assert received.endswith(DONE)
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 4)
    assert line["usage_reported"] is True and line["finish_reasons"] == ["stop"]


async def test_a_client_that_asked_for_usage_gets_its_usage_chunk(
    processor: Processor, services: Services
) -> None:
    body = completion(stream=True, stream_options={"include_usage": True})
    answers = await play_sse(processor, COMPLETIONS, AUTH, body, STREAM)
    assert client_body(STREAM, answers) == b"".join(STREAM)
    assert only_line(services)["total_tokens"] == 9


def test_a_completion_chunks_text_counts_as_generated() -> None:
    assert generated_chars(chunk(" is a test", asked=False)) == len(" is a test")


async def test_a_stream_cut_before_its_usage_is_charged_the_text_it_carried(
    processor: Processor, services: Services
) -> None:
    cut = [chunk("x" * 24), chunk("y" * 16)]
    await play_sse(processor, COMPLETIONS, AUTH, completion(stream=True), cut, ended=False)
    line = only_line(services)
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == 40 // CHARS_PER_TOKEN
    assert line["prompt_tokens"] == estimate_prompt(orjson.loads(completion()))


# --- the quota ----------------------------------------------------------------------------------


def test_the_estimate_counts_token_ids_as_given_and_text_by_characters() -> None:
    text = "The quarterly report shows growth in every region. " * 4
    assert estimate_prompt({"prompt": text}) == len(text) // CHARS_PER_TOKEN
    assert estimate_prompt({"prompt": list(range(300))}) == 300
    assert estimate_prompt({"prompt": [[1, 2, 3], [4, 5]]}) == 5
    assert estimate_prompt({"prompt": [text, text]}) == 2 * (len(text) // CHARS_PER_TOKEN)
    # A fill-in-the-middle request's suffix is read too.
    assert estimate_prompt({"prompt": text, "suffix": text}) == 2 * (len(text) // CHARS_PER_TOKEN)


@pytest.mark.parametrize(
    ("fields", "choices"),
    [
        ({}, 1),
        ({"n": 3}, 3),
        ({"best_of": 5, "n": 2}, 5),
        ({"prompt": ["a", "b"], "n": 2}, 4),
        ({"prompt": [[1], [2], [3]]}, 3),
        ({"prompt": [1, 2, 3], "n": 2}, 2),
    ],
)
def test_the_provider_generates_best_of_or_n_completions_per_prompt(
    fields: dict[str, Any], choices: int
) -> None:
    assert generated_choices({"prompt": PROMPT, **fields}) == choices


async def test_the_reservation_is_max_tokens_times_the_completions_asked_for(
    quota_store: QuotaStore,
) -> None:
    # Two prompts, best_of 3: six completions of up to 50 tokens each.
    body = completion(prompt=["a" * 40, "b" * 40], n=2, best_of=3, max_tokens=50)
    prompt = estimate_prompt(orjson.loads(body))
    processor, _ = capped(quota_store, 100_000)
    await run_stream(processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)])
    # The request never ended: its reservation is still held whole.
    assert await used_tokens(quota_store, 100_000) == prompt + 6 * 50


async def test_the_reservation_is_settled_with_the_providers_count(
    quota_store: QuotaStore,
) -> None:
    processor, _ = capped(quota_store, 100_000)
    await whole(processor, completion(max_tokens=500, n=4), answer("a", "b", "c", "d"))
    await quota_store.flush()
    assert await used_tokens(quota_store, 100_000) == 12


async def test_a_hard_cap_shares_the_room_left_between_the_completions(
    quota_store: QuotaStore,
) -> None:
    body = completion(n=3, max_tokens=5000)
    prompt = estimate_prompt(orjson.loads(body))
    processor, _ = capped(quota_store, prompt + 300)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)]
    )
    sent = upstream_body(answers[1])
    # Three completions of 100 tokens fit in the 300 left; max_tokens is the one field.
    assert sent["max_tokens"] == 100 and "max_completion_tokens" not in sent


async def test_a_hard_cap_too_small_for_every_completion_refuses_with_a_429(
    quota_store: QuotaStore,
) -> None:
    body = completion(n=8)
    prompt = estimate_prompt(orjson.loads(body))
    processor, services = capped(quota_store, prompt + 5)
    answers = await run_stream(
        processor, [request_headers(COMPLETIONS, headers=AUTH), request_body(body)]
    )
    status, error = error_of(answers[1])
    assert status == 429 and error["code"] == "insufficient_quota"
    assert only_line(services)["quota_decision"] == "rejected"


# --- guardrails -----------------------------------------------------------------------------


def guarded() -> Gateway:
    return Gateway(config_with(WORKSHOP, {ROUTE: {"guardrails": "workshop"}}))


async def test_a_reject_guard_refuses_a_prompt_before_the_provider() -> None:
    gateway = guarded()
    answers = await gateway.send(COMPLETIONS, completion(prompt=["fine", "a credit card?"]))
    status, error = error_of(answers[1])
    assert status == 403 and error["message"] == "Sorry, I cannot talk about credit cards."
    assert gateway.log()["quota_decision"] is None


async def test_a_mask_guard_masks_the_prompt_and_the_suffix() -> None:
    gateway = guarded()
    body = completion(prompt="mail bob@example.com", suffix=" or alice@example.com")
    answers = await gateway.send(COMPLETIONS, body)
    sent = upstream_body(answers[1])
    assert "@example.com" not in sent["prompt"] + sent["suffix"]
    assert sent["prompt"].startswith("mail ")


async def test_a_prompt_of_token_ids_passes_the_request_guards_unread() -> None:
    gateway = guarded()
    answers = await gateway.send(COMPLETIONS, completion(prompt=[1, 2, 3]))
    assert set_headers(answers[1])[headers.CLUSTER] == "provider_mock"
    decisions = gateway.log()["guardrails"]
    assert {d["action"] for d in decisions if d["phase"] == "request"} == {"pass"}


CARD = "4111 1111 1111 1111"


async def test_a_whole_answers_text_is_masked() -> None:
    gateway = guarded()
    answers = await gateway.send(
        COMPLETIONS,
        completion(),
        response_headers(200),
        response_body(answer(f"Card {CARD}.", "no card")),
    )
    client = orjson.loads(answers[-1].response_body.response.body_mutation.body)
    assert CARD not in client["choices"][0]["text"]
    assert client["choices"][1]["text"] == "no card"
    assert client["usage"]["completion_tokens"] == 7


async def test_a_streamed_answers_text_is_masked_across_chunks() -> None:
    gateway = guarded()
    stream = [chunk("Card 4111 1111"), chunk(" 1111 1111", "stop"), usage_chunk(5, 6), DONE]
    answers = await play_sse(gateway.processor, COMPLETIONS, AUTH, completion(stream=True), stream)
    received = client_body(stream, answers)
    texts = [
        choice["text"]
        for event in received.split(b"\n\n")
        if event.startswith(b"data: {")
        for choice in orjson.loads(event[6:])["choices"]
    ]
    assert "".join(texts).startswith("Card ") and "1111" not in "".join(texts)
    assert b'"object":"text_completion"' in received
    decisions = gateway.log()["guardrails"]
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in decisions
