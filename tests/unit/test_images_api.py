"""OpenAI's Images API (``POST /v1/images/generations``) is routed, guarded, held to quotas
and billed at the image model's prices.

Before, the gateway had no route for it: ``client.images.generate`` got a 404
``route_not_found`` from Envoy, and a client based at ``<gateway>/openai`` had its call
read as a chat completion (a 400 about ``messages``). Now it is an OpenAI API of its
own: authenticated, its ``prompt`` guarded, its pictures reserved against token quotas,
the provider's key injected, and its ``usage`` billed (text input at the input price,
image input at ``image_input_per_million``, the pictures at
``image_output_per_million``) in every ledger. Variations are refused with a 400 naming
what is served; edits are served (test_image_edits).

Each request is played through the real processor (real ext_proc messages).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc import headers
from extproc.images_api import picture_allowance
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.store.connection import StoreClient
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped_request
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review_streams import (
    OPENAI_KEY,
    SSE,
    Answer,
    ledgers,
    sample,
)
from tests.unit.test_accounting_review_streams import store as store
from tests.unit.test_audio_token_log import span_metadata
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate

GENERATIONS = "/v1/images/generations"
JSON = {"content-type": "application/json"}
# gpt-image-1's prices in the default config, USD per million tokens.
TEXT_IN, IMAGE_IN, IMAGE_OUT = Decimal("5.00"), Decimal("10.00"), Decimal("40.00")
PICTURE = "iVBORw0KGgo="
# 12 text and 8 image input tokens (OpenAI reports image input on edits; read wherever it
# comes), one medium picture.
USAGE = {"input_tokens": 20, "input_tokens_details": {"text_tokens": 12, "image_tokens": 8},
         "output_tokens": 1_056, "total_tokens": 1_076}  # fmt: skip
COST = (12 * TEXT_IN + 8 * IMAGE_IN + 1_056 * IMAGE_OUT) / 10**6


def asked(**fields: Any) -> bytes:
    body = {"model": "gpt-image-1", "prompt": "A cat on a mat.", "size": "1024x1024",
            "quality": "medium", **fields}  # fmt: skip
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def answer(usage: Any = USAGE, pictures: int = 1) -> bytes:
    found: dict[str, Any] = {
        "created": 1, "data": [{"b64_json": PICTURE}] * pictures, "background": "opaque",
        "output_format": "png", "quality": "medium", "size": "1024x1024",
    }  # fmt: skip
    if usage is not None:
        found["usage"] = usage
    return orjson.dumps(found)


def event(kind: str, **fields: Any) -> bytes:
    data = {"type": kind, "b64_json": PICTURE, "created_at": 1, **fields}
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def set_headers(answer: ext.ProcessingResponse) -> dict[str, str]:
    return {
        h.header.key: h.header.raw_value.decode()
        for h in answer.request_body.response.header_mutation.set_headers
    }


def error_of(answer: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    status, body = immediate(answer)
    return status, body["error"]


async def generate(
    processor: Processor, body: bytes, reply: bytes, path: str = GENERATIONS
) -> list[ext.ProcessingResponse]:
    return await run_stream(
        processor,
        [
            request_headers(path, headers=OPENAI_KEY),
            request_body(body),
            response_headers(200, JSON),
            response_body(reply),
        ],
    )


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


# --- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (GENERATIONS, "openai-images"),
        ("/openai/v1/images/generations", "openai-prefix-images"),
        ("/openai/images/generations", "openai-bare-prefix-images"),
    ],
)
async def test_a_generation_reaches_the_providers_images_endpoint_with_its_key(
    processor: Processor, services: Services, path: str, route: str
) -> None:
    answers = await generate(processor, asked(), answer(), path)
    mutated = set_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    # The mock's base URL ends in /v1: the provider's path is the API's own.
    assert mutated.get(":path", path) == GENERATIONS
    line = only_line(services)
    assert (line["route"], line["http_status_code"], line["model"]) == (route, 200, "gpt-image-1")


async def test_an_unknown_key_is_refused_before_the_provider(processor: Processor) -> None:
    answers = await run_stream(
        processor,
        [request_headers(GENERATIONS, headers={"authorization": "Bearer nope"})],
    )
    status, error = error_of(answers[0])
    assert (status, error["type"]) == (401, "authentication_error")


async def test_variations_are_a_clear_400_in_openais_shape(
    processor: Processor, services: Services
) -> None:
    """Only the deprecated dall-e-2 makes variations, with no usage to bill: refused at
    the headers, before any body, quota or provider, naming what is served (edits are
    served: test_image_edits)."""
    headers_only = {**OPENAI_KEY, "content-type": "multipart/form-data; boundary=x"}
    answers = await run_stream(
        processor, [request_headers("/v1/images/variations", headers=headers_only)]
    )
    status, error = error_of(answers[0])
    assert (status, error["type"], error["code"]) == (
        400,
        "invalid_request_error",
        "unsupported_endpoint",
    )
    assert "/v1/images/generations" in error["message"]
    assert "/v1/images/edits" in error["message"]
    line = only_line(services)
    assert (line["http_status_code"], line["quota_decision"], line["provider"]) == (400, None, None)


async def test_another_path_under_the_images_prefix_is_a_404(processor: Processor) -> None:
    answers = await run_stream(processor, [request_headers("/v1/images/other", headers=OPENAI_KEY)])
    status, error = error_of(answers[0])
    assert (status, error["code"]) == (404, "route_not_found")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({"n": 0}, "n"),
        ({"n": 11}, "n"),
        ({"n": True}, "n"),
        ({"quality": 3}, "quality"),
        ({"stream": "yes"}, "stream"),
        ({"partial_images": 4}, "partial_images"),
        ({"messages": []}, "messages"),
        ({"model": None}, "model"),
    ],
)
async def test_a_body_the_gateway_cannot_count_is_a_400_naming_the_field_before_the_quota(
    processor: Processor, services: Services, fields: dict[str, Any], param: str
) -> None:
    answers = await run_stream(
        processor, [request_headers(GENERATIONS, headers=OPENAI_KEY), request_body(asked(**fields))]
    )
    status, error = error_of(answers[1])
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")
    assert only_line(services)["quota_decision"] is None


async def test_a_model_of_a_provider_without_the_api_is_a_clear_400(
    processor: Processor,
) -> None:
    answers = await run_stream(
        processor,
        [
            request_headers(GENERATIONS, headers=OPENAI_KEY),
            request_body(asked(model="claude-3-5-haiku-latest")),
        ],
    )
    status, error = error_of(answers[1])
    assert (status, error["code"]) == (400, "unsupported_model_for_route")
    assert "Images API" in error["message"]


async def test_the_prompt_is_guarded() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-images": {"guardrails": "workshop"}}))
    answers = await gateway.send(GENERATIONS, asked(prompt="A poster of my credit card."))
    status, body = immediate(answers[-1])
    assert (status, body["error"]["type"]) == (403, "permission_error")
    assert gateway.log()["quota_decision"] is None


# --- the bill ------------------------------------------------------------------------------------


async def test_a_picture_is_billed_at_the_image_prices(
    processor: Processor, services: Services
) -> None:
    await generate(processor, asked(), answer())
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 1_056)
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (8, 1_056)
    assert line["image_generation_model"] is None  # the request's own tokens, not a tool's
    assert cost(line) == COST and line["cost_priced"] is True
    assert line["usage_reported"] is True
    for part, count in [("prompt_image", 8), ("completion_image", 1_056)]:
        assert sample(services, "aigw_token_parts_total", token_type=part) == count


async def test_text_the_model_wrote_is_billed_at_its_output_price(
    processor: Processor, services: Services
) -> None:
    details = {"text_tokens": 6, "image_tokens": 1_050}
    await generate(processor, asked(), answer({**USAGE, "output_tokens_details": details}))
    line = only_line(services)
    assert line["completion_image_tokens"] == 1_050
    # gpt-image-1's output price is its image output price in the default config.
    assert cost(line) == COST


async def test_an_answer_without_usage_is_charged_its_pictures_allowance(
    processor: Processor, services: Services
) -> None:
    """A provider that reports no usage still drew: each picture it holds is charged
    what the quota reserved for one, at the image price."""
    await generate(processor, asked(quality="low"), answer(None, pictures=2))
    line = only_line(services)
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == line["completion_image_tokens"] == 2 * 272


async def test_the_span_carries_the_operation_and_the_image_parts_of_the_counts(
    processor: Processor,
) -> None:
    """The request's span (Envoy's tags from the gateway's metadata): the operation,
    the counts as the log line has them, and the image parts of both sides, each
    billed at its own image price."""
    answers = await generate(processor, asked(), answer())
    metadata = span_metadata(answers)
    assert metadata["operation"] == "generate_content"
    assert (metadata["prompt_tokens"], metadata["completion_tokens"]) == (20, 1_056)
    assert metadata["prompt_image_tokens"] == 8
    assert metadata["completion_image_tokens"] == 1_056


def test_the_quota_reserves_each_picture_at_its_quality_and_size() -> None:
    assert picture_allowance({"n": 2, "quality": "low", "size": "1024x1024"}) == 2 * 272
    assert picture_allowance({"quality": "high", "size": "1536x1024"}) == 6_240
    # A quality the provider picks is reserved at the highest.
    assert picture_allowance({"size": "1024x1024"}) == 4_160


# --- streams and the four ledgers --------------------------------------------------------------


@pytest.mark.parametrize("ending", ["completed", "cut-drawing", "error"])
async def test_every_ledger_agrees_on_a_streamed_picture(store: StoreClient, ending: str) -> None:
    """``stream: true``: partial pictures, then image_generation.completed with the
    usage. Whole, the usage is billed; cut after a partial picture (the client left,
    the provider drew on), the pictures' allowance at the image price beside the
    prompt's estimate; failed by the provider's error event after a partial picture,
    the prompt's estimate alone (the picture it failed to draw is not billed). The log
    line, the metrics, the rollup and the quota agree."""
    chunks = [event("image_generation.partial_image", partial_image_index=0)]
    if ending == "completed":
        chunks.append(event("image_generation.completed", usage=USAGE))
    if ending == "error":
        error = {"type": "server_error", "code": "server_error", "message": "overloaded"}
        failed = orjson.dumps({"type": "error", "error": error})
        chunks.append(b"event: error\ndata: " + failed + b"\n\n")
    body = orjson.loads(asked(stream=True, partial_images=1, quality="low"))
    recorded = await ledgers(
        store, GENERATIONS, OPENAI_KEY, body, Answer(chunks, SSE, ended=ending != "cut-drawing")
    )
    recorded.agree()
    line = recorded.line
    if ending == "completed":
        assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 1_056)
        assert cost(line) == COST
        assert recorded.image == (1_056, 1_056)
        return
    assert line["usage_estimated"] is True
    drawn = 272 if ending == "cut-drawing" else 0
    assert line["completion_tokens"] == line["completion_image_tokens"] == drawn
    assert recorded.image == (drawn, drawn)
    assert line["prompt_tokens"] > 0


async def test_a_streamed_generation_of_several_pictures_is_billed_the_sum_of_their_events(
    store: StoreClient,
) -> None:
    """``n: 2`` streamed: OpenAI sends each picture's partial pictures and its own
    image_generation.completed event, whose usage is that picture's (its prompt read,
    its picture drawn). The bill is the sum of the two events, not the last one's."""
    chunks = [
        event("image_generation.partial_image", partial_image_index=0),
        event("image_generation.completed", usage=USAGE),
        event("image_generation.partial_image", partial_image_index=0),
        event("image_generation.completed", usage=USAGE),
    ]
    body = orjson.loads(asked(stream=True, n=2, partial_images=1))
    recorded = await ledgers(store, GENERATIONS, OPENAI_KEY, body, Answer(chunks, SSE))
    recorded.agree()
    line = recorded.line
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 2_112)
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (16, 2_112)
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert cost(line) == 2 * COST
    assert recorded.image == (2_112, 2_112)


async def test_a_stream_cut_after_the_first_of_three_pictures_is_charged_the_other_two_too(
    store: StoreClient,
) -> None:
    """The client left after the first picture's completed event; the provider drew
    the other two and bills them. The first is billed as reported, each other one its
    reserve (1,056 tokens for a medium square picture) with the prompt as the first
    reported it, marked usage_estimated, as a cut chat stream is."""
    chunks = [event("image_generation.completed", usage=USAGE)]
    body = orjson.loads(asked(stream=True, n=3))
    recorded = await ledgers(store, GENERATIONS, OPENAI_KEY, body, Answer(chunks, SSE, ended=False))
    recorded.agree()
    line = recorded.line
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (60, 3 * 1_056)
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (24, 3 * 1_056)
    assert cost(line) == 3 * COST
    assert recorded.image == (3 * 1_056, 3 * 1_056)


async def test_a_provider_error_after_the_first_picture_keeps_that_pictures_bill(
    store: StoreClient,
) -> None:
    """The provider drew one picture of two and failed the second with an error event:
    the picture the client got is billed as reported, the one it failed to draw not."""
    error = {"type": "server_error", "code": "server_error", "message": "overloaded"}
    chunks = [
        event("image_generation.completed", usage=USAGE),
        b"event: error\ndata: " + orjson.dumps({"type": "error", "error": error}) + b"\n\n",
    ]
    body = orjson.loads(asked(stream=True, n=2))
    recorded = await ledgers(store, GENERATIONS, OPENAI_KEY, body, Answer(chunks, SSE))
    recorded.agree()
    line = recorded.line
    assert line["outcome"] == "upstream_error" and line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 1_056)
    assert cost(line) == COST


async def test_a_completed_picture_without_usage_is_charged_its_reserve(
    store: StoreClient,
) -> None:
    """A provider whose completed event reports no usage still drew the picture: it is
    charged what the quota reserved for it (272 for a low square one), at the image
    price, as a JSON answer without usage is."""
    chunks = [event("image_generation.completed")]
    body = orjson.loads(asked(stream=True, quality="low"))
    recorded = await ledgers(store, GENERATIONS, OPENAI_KEY, body, Answer(chunks, SSE))
    recorded.agree()
    line = recorded.line
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == line["completion_image_tokens"] == 272


async def test_a_hard_capped_budget_without_room_for_the_pictures_is_a_429(
    quota_store: QuotaStore,
) -> None:
    """Nothing bounds a picture's tokens, so a hard cap admits a generation only with
    room for all its pictures: 300 tokens take one low-quality square picture (272), not
    a high-quality one (4,160), which is refused before the provider with a 429."""
    low = orjson.loads(asked(quality="low"))
    admitted = await capped_request(quota_store, 300, GENERATIONS, low)
    assert set_headers(admitted)[headers.CLUSTER] == "provider_mock"
    refused = await capped_request(
        quota_store, 300, GENERATIONS, orjson.loads(asked(quality="high"))
    )
    status, error = error_of(refused)
    assert status == 429 and error["type"] == "rate_limit_error"
