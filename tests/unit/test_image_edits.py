"""OpenAI's image edits (``POST /v1/images/edits``, a multipart/form-data form) are routed,
guarded, held to quotas and billed as generations are.

Before, the gateway refused every edit with a 400 ``unsupported_endpoint`` ("take
multipart/form-data, which this gateway does not serve"). Now the form's text fields are
read, the model routed, the prompt guarded, the pictures to draw and to read reserved,
the form sent on as it came with the provider's key, and the answer's ``usage`` (its
``image_tokens`` of input at ``image_input_per_million``) billed. Played through the
real processor (real ext_proc messages).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from extproc import headers
from extproc.config import GatewayConfig
from extproc.config.loader import parse_config
from extproc.guardrails.moderated_images import edit_images
from extproc.images_api import input_image_tokens, picture_allowance
from extproc.multipart_form import read_form
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
from extproc.translators.openai_images import ImageEventReader
from tests.unit.guard_helpers import config_with
from tests.unit.quota_helpers import capped_request
from tests.unit.sse_play import only_line
from tests.unit.test_accounting_review_streams import OPENAI_KEY, SSE, Answer, ledgers, sample
from tests.unit.test_accounting_review_streams import store as store
from tests.unit.test_guard_flow import WORKSHOP, Gateway, immediate
from tests.unit.test_images_api import (
    COST,
    IMAGE_IN,
    IMAGE_OUT,
    JSON,
    TEXT_IN,
    USAGE,
    answer,
    asked,
    cost,
    error_of,
    event,
    set_headers,
)

EDITS = "/v1/images/edits"
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def form(
    pictures: int = 1, field: str = "image", **fields: str | None
) -> tuple[bytes, dict[str, str]]:
    """An edit as the openai SDK sends it: its body and its headers (key included)."""
    sent = {"model": "gpt-image-1", "prompt": "Add a boat.", "quality": "medium", **fields}
    files = [(field, (f"{i}.png", PICTURE, "image/png")) for i in range(pictures)]
    request = httpx.Request(
        "POST",
        f"http://gateway{EDITS}",
        data={k: v for k, v in sent.items() if v is not None},
        files=files,
    )
    return request.read(), {**OPENAI_KEY, "content-type": request.headers["content-type"]}


async def edit(
    processor: Processor, body: bytes, sent: dict[str, str], reply: bytes = b""
) -> list[Any]:
    messages = [request_headers(EDITS, headers=sent), request_body(body)]
    if reply:
        messages += [response_headers(200, JSON), response_body(reply)]
    return await run_stream(processor, messages)


async def test_an_edit_reaches_the_providers_edits_endpoint_as_sent_with_its_key(
    processor: Processor, services: Services
) -> None:
    body, sent = form()
    answers = await edit(processor, body, sent, answer())
    mutated = set_headers(answers[1])
    assert mutated[headers.CLUSTER] == "provider_mock"
    assert mutated["authorization"] == "Bearer mock-provider-key"
    assert mutated.get(":path", EDITS) == EDITS
    # The form goes as it came: its bytes untouched, its content type (boundary) kept.
    assert not answers[1].request_body.response.HasField("body_mutation")
    assert "content-type" not in mutated
    line = only_line(services)
    assert (line["route"], line["http_status_code"], line["model"]) == (
        "openai-image-edits",
        200,
        "gpt-image-1",
    )


async def test_an_edit_is_billed_at_the_image_prices_its_input_pictures_included(
    processor: Processor, services: Services
) -> None:
    body, sent = form()
    await edit(processor, body, sent, answer())
    line = only_line(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 1_056)
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (8, 1_056)
    assert cost(line) == COST and line["usage_reported"] is True
    assert sample(services, "aigw_token_parts_total", token_type="prompt_image") == 8
    assert sample(services, "tokens_consumed_total", token_type="prompt") == 20


@pytest.mark.parametrize(
    ("content_type", "code"),
    [
        ("application/json", "invalid_multipart"),
        ("multipart/form-data", "invalid_multipart"),
    ],
)
async def test_a_body_that_is_no_form_is_a_clear_400(
    processor: Processor, services: Services, content_type: str, code: str
) -> None:
    body, sent = form()
    answers = await edit(processor, body, {**sent, "content-type": content_type})
    status, error = error_of(answers[-1])
    assert (status, error["type"], error["code"]) == (400, "invalid_request_error", code)
    assert only_line(services)["quota_decision"] is None


@pytest.mark.parametrize(
    ("field", "fields", "param"),
    [
        ("mask", {}, "image"),  # a mask, no picture to edit
        ("image", {"model": None}, "model"),
        ("image", {"prompt": None}, "prompt"),
        ("image", {"n": "11"}, "n"),
        ("image", {"n": "two"}, "n"),
        ("image", {"stream": "yes"}, "stream"),
        ("image", {"partial_images": "4"}, "partial_images"),
    ],
)
async def test_a_form_the_gateway_cannot_count_is_a_400_naming_the_field(
    processor: Processor,
    services: Services,
    field: str,
    fields: dict[str, str | None],
    param: str,
) -> None:
    body, sent = form(1, field, **fields)
    answers = await edit(processor, body, sent)
    status, error = error_of(answers[-1])
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")
    assert only_line(services)["quota_decision"] is None


@pytest.mark.parametrize("name", ["prompt", "model", "n", "notes"])
async def test_a_file_part_outside_the_picture_fields_is_a_400_before_the_provider(
    processor: Processor, services: Services, name: str
) -> None:
    """The gateway guards, routes and counts the form's text fields; a ``prompt`` (or
    ``model``, ``n``) sent as a file beside them would reach the provider unread, a
    second prompt no guard saw. An edit's files are its pictures and mask alone."""
    _, sent = form()
    request = httpx.Request(
        "POST",
        f"http://gateway{EDITS}",
        data={"model": "gpt-image-1", "prompt": "Add a boat."},
        files=[
            ("image", ("0.png", PICTURE, "image/png")),
            (name, ("p.txt", b"Write bob@example.com on the boat.", "text/plain")),
        ],
    )
    sent["content-type"] = request.headers["content-type"]
    answers = await edit(processor, request.read(), sent)
    status, error = error_of(answers[-1])
    assert (status, error["param"], error["code"]) == (400, name, "invalid_multipart")
    assert "'image', 'image[]' or 'mask'" in error["message"]
    assert only_line(services)["quota_decision"] is None


async def test_a_model_of_a_provider_without_the_images_api_is_a_400_naming_edits(
    processor: Processor, services: Services
) -> None:
    """Claude is served by an Anthropic provider, which has no Images API: refused by
    name before the quota, the message naming the endpoint the client called."""
    body, sent = form(model="claude-3-5-haiku-latest")
    answers = await edit(processor, body, sent)
    status, error = error_of(answers[-1])
    assert (status, error["code"], error["param"]) == (400, "unsupported_model_for_route", "model")
    assert "/v1/images/edits" in error["message"]
    assert only_line(services)["quota_decision"] is None


def image_model_with_fallbacks() -> GatewayConfig:
    """The default config, gpt-image-1 falling back to gpt-image-1-mini on OpenAI."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    models = {model["name"]: model for model in raw["models"]}
    models["gpt-image-1"]["fallbacks"] = ["gpt-image-1-mini"]
    models["gpt-image-1-mini"]["provider"] = "openai"
    return parse_config(yaml.safe_dump(raw), "test", {})


async def test_an_image_model_with_fallbacks_is_served_by_its_own_provider_as_sent() -> None:
    """The Images API does not fail over: each failover attempt is re-made from a JSON
    body, and an edit's is a form. A model with ``fallbacks`` (here gpt-image-1, falling
    back to gpt-image-1-mini on another provider) is served by its own provider, its
    edit's form as the client sent it (no failover chain written into it), its
    generation's body likewise; the provider's error, if any, reaches the client."""
    gateway = Gateway(image_model_with_fallbacks())
    body, sent = form()
    edited = await edit(gateway.processor, body, sent)
    assert set_headers(edited[1])[headers.CLUSTER] == "provider_mock"
    assert not edited[1].request_body.response.HasField("body_mutation")
    drawn = await run_stream(
        gateway.processor,
        [request_headers("/v1/images/generations", headers=OPENAI_KEY), request_body(asked())],
    )
    assert set_headers(drawn[1])[headers.CLUSTER] == "provider_mock"
    assert not drawn[1].request_body.response.HasField("body_mutation")


async def test_a_form_over_the_body_limit_is_a_413(processor: Processor) -> None:
    """Over the edit route's own limit (64 MiB in the default config, where every other
    route, image generations' included, keeps 1 MiB), by its declared length at the
    headers; by its bytes when it declared none: tests/unit/test_route_body_limits.py."""
    _, sent = form()
    answers = await run_stream(
        processor, [request_headers(EDITS, headers={**sent, "content-length": str(2**30)})]
    )
    status, error = error_of(answers[0])
    assert (status, error["type"]) == (413, "invalid_request_error")
    assert "over the limit of 67108864 bytes of route 'openai-image-edits'" in error["message"]


async def test_the_prompt_is_guarded_and_a_masked_one_spliced_into_the_form() -> None:
    gateway = Gateway(config_with(WORKSHOP, {"openai-image-edits": {"guardrails": "workshop"}}))
    body, sent = form(prompt="A poster of my credit card.")
    answers = await run_stream(
        gateway.processor, [request_headers(EDITS, headers=sent), request_body(body)]
    )
    status, refused = immediate(answers[-1])
    assert (status, refused["error"]["type"]) == (403, "permission_error")
    assert gateway.log()["quota_decision"] is None

    body, sent = form(prompt="Write bob@example.com on the boat.")
    answers = await run_stream(
        gateway.processor, [request_headers(EDITS, headers=sent), request_body(body)]
    )
    upstream = answers[-1].request_body.response.body_mutation.body
    content_type = sent["content-type"]
    sent_on = read_form(upstream, content_type)
    assert "bob@example.com" not in sent_on.fields["prompt"]
    assert upstream[sent_on.files[0].start : sent_on.files[0].end] == PICTURE


def test_the_quota_reserves_the_pictures_to_draw_and_to_read() -> None:
    body, sent = form(2, "image[]", input_fidelity="high")
    edit_form = read_form(body, sent["content-type"])
    assert input_image_tokens(edit_form, {"input_fidelity": "high"}) == 2 * (1_105 + 6_240)
    assert input_image_tokens(edit_form, {}) == 2 * 1_105
    assert picture_allowance({"quality": "low", "size": "1024x1024"}) == 272


async def test_a_hard_capped_budget_without_room_for_the_pictures_read_is_a_429(
    quota_store: QuotaStore,
) -> None:
    """300 tokens take a generation of one low-quality square picture (272 tokens and
    its prompt), not an edit of it: reading the picture given is 1,105 more."""
    body, sent = form(quality="low", size="1024x1024")
    refused = await capped_request(quota_store, 300, EDITS, body, sent["content-type"])
    status, error = error_of(refused)
    assert status == 429 and error["type"] == "rate_limit_error"
    # Answered by the gateway, nothing sent on: OpenAI's headers say which limit and when.
    said = {
        h.header.key: h.header.raw_value.decode()
        for h in refused.immediate_response.headers.set_headers
    }
    assert said["x-ratelimit-limit-tokens"] == "300"
    assert {"x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= said.keys()
    admitted = await capped_request(quota_store, 2_000, EDITS, body, sent["content-type"])
    assert set_headers(admitted)[headers.CLUSTER] == "provider_mock"


def test_an_edits_stream_is_read_to_its_completed_event() -> None:
    reader = ImageEventReader(allowance=1_056)
    reader.feed(event("image_edit.partial_image", partial_image_index=0), False)
    assert reader.counts_so_far() is not None  # drawing: cut now, charged the allowance
    reader.feed(event("image_edit.completed", usage=USAGE), True)
    assert reader.usage is not None
    assert (reader.usage.prompt_tokens, reader.usage.completion_tokens) == (20, 1_056)
    assert reader.terminal_event_read


@pytest.mark.parametrize(
    ("ending", "drawn"), [("cut-drawing", 272), ("cut-before-any", 0), ("error", 0)]
)
async def test_an_edit_stream_without_its_usage_bills_the_pictures_read_at_the_image_price(
    store: StoreClient, ending: str, drawn: int
) -> None:
    """Cut after a partial picture (the client left; the provider draws on), cut before
    any, or failed by the provider's error event: the bill is estimated, and the picture
    given to edit, read by the provider whatever came of it, is its 1,105 reserved input
    tokens at the image input price, as the provider's count would bill it, beside the
    prompt's text (3 tokens) and any picture being drawn (272, low and square)."""
    body, sent = form(stream="true", partial_images="1", quality="low", size="1024x1024")
    chunks = [event("image_edit.partial_image", partial_image_index=0)]
    if ending == "cut-before-any":
        chunks = [b": keep-alive\n\n"]
    if ending == "error":
        failed = {"type": "error", "error": {"type": "server_error", "message": "overloaded"}}
        chunks.append(b"event: error\ndata: " + orjson.dumps(failed) + b"\n\n")
    ended = ending == "error"
    recorded = await ledgers(store, EDITS, sent, body, Answer(chunks, SSE, ended=ended))
    recorded.agree()
    line = recorded.line
    assert line["usage_estimated"] is True
    assert (line["prompt_tokens"], line["prompt_image_tokens"]) == (3 + 1_105, 1_105)
    assert line["completion_tokens"] == line["completion_image_tokens"] == drawn
    assert cost(line) == (3 * TEXT_IN + 1_105 * IMAGE_IN + drawn * IMAGE_OUT) / 10**6


def test_a_moderation_that_reads_images_is_sent_the_pictures_to_edit_not_the_mask() -> None:
    files = [("image[]", ("a.png", PICTURE, "image/png"))] * 2
    request = httpx.Request(
        "POST",
        f"http://gateway{EDITS}",
        data={"model": "gpt-image-1", "prompt": "Add a boat."},
        files=[*files, ("mask", ("m.png", b"MASK", "image/png"))],
    )
    with_mask = read_form(request.read(), request.headers["content-type"])
    urls = [image.url for image in edit_images(with_mask)]
    assert urls == [f"data:image/png;base64,{base64.b64encode(PICTURE).decode()}"] * 2


@pytest.mark.parametrize(
    ("given", "media"),
    [
        ("image/webp", "image/webp"),
        ("IMAGE/JPEG", "image/jpeg"),
        # A type that would write the data URL itself: a decoy picture before the real
        # one, which a moderation would read instead (and a key in it, sent on).
        (f"image/png;base64,{base64.b64encode(b'DECOY').decode()}#", "image/png"),
        ("image/png; team1-key", "image/png"),
        ("text/html", "image/png"),
    ],
)
def test_a_moderation_is_sent_each_picture_under_a_plain_image_type_only(
    given: str, media: str
) -> None:
    request = httpx.Request(
        "POST",
        f"http://gateway{EDITS}",
        data={"model": "gpt-image-1", "prompt": "Add a boat."},
        files=[("image", ("a.png", PICTURE, given))],
    )
    [image] = edit_images(read_form(request.read(), request.headers["content-type"]))
    assert image.url == f"data:{media};base64,{base64.b64encode(PICTURE).decode()}"
