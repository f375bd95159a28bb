"""Pictures drawn through the gateway are billed at the image model's prices, through the
real stack: Envoy, the gateway, its embedded Valkey and the mock provider, driven by the
official openai client.

Two ways to draw, both billed by OpenAI at its GPT Image model's prices:

- the Images API, ``client.images.generate`` (before: Envoy's 404 ``route_not_found``,
  the gateway had no route for it), whole and streamed;
- the Responses API's ``image_generation`` tool, ``client.responses.create`` with
  ``tools=[{"type": "image_generation"}]``, whose picture's tokens come in
  ``tool_usage.image_gen`` apart from ``usage`` (before: billed nothing).

The log line, the cost counter, ``aigw_token_parts_total``, the usage report and the
quota agree on every picture and its image-priced cost. An edit
(``client.images.edit`` with a picture file) reaches the provider as sent and is billed
the same way, and one whose prompt a guard masked reaches it as a valid form of the
spliced length; variations are a clear 400 in OpenAI's shape.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.responses.tool_param import ImageGeneration as ImageGenerationTool

from extproc.devstack import LocalStack
from extproc.management.client import QuotaClient
from extproc.mock_llm import count_tokens
from extproc.mock_llm.image_bytes import format_of
from extproc.mock_llm.images_api import EDIT_IMAGE_TOKENS, OUTPUT_TOKENS, PNG_BASE64
from extproc.multipart_form import read_form
from tests.integration.conftest import (
    GatewayLog,
    default_config,
    metric,
    mock_requests,
    running_stack,
    scrape,
    usage_rows,
    wait_for,
    write_config,
)

KEY_ID, KEY = "studio", "studio-key-5e0b"
# Edits have a key of their own: its ledgers hold the edit alone.
EDIT_KEY_ID, EDIT_KEY = "retouch", "retouch-key-77c1"
# The streamed generation of several pictures has a key of its own: its ledgers hold it alone.
SKETCH_KEY_ID, SKETCH_KEY = "sketch", "sketch-key-9d41"
# The large edit's and the large chat's key: their ledgers hold those alone.
LARGE_KEY_ID, LARGE_KEY = "poster", "poster-key-3a90"
# The keys of Responses streams cut while their image generation tool drew: by the
# provider's reset, and by the client hanging up.
RESET_KEY_ID, RESET_KEY = "mural", "mural-key-41b7"
HANG_UP_KEY_ID, HANG_UP_KEY = "doodle", "doodle-key-c28e"
# The keys of non-streamed Responses calls with the tool that never came whole: cut by the
# provider's reset mid-body, and left by a client that timed out before any answer.
CUT_BODY_KEY_ID, CUT_BODY_KEY = "fresco", "fresco-key-0b6d"
TIMED_OUT_KEY_ID, TIMED_OUT_KEY = "etching", "etching-key-5f13"
MIB = 1024 * 1024
# The default config's edit routes' own body limit; every other route, image
# generations' included, keeps the default 1 MiB.
EDITS_BODY_LIMIT = 64 * MIB
EDIT_PROMPT = "Add a red boat on the water."
# A picture to edit: a PNG's bytes and every byte value after them (CRs, LFs and dashes,
# as a form's delimiters are made of), 16 KiB.
BOAT = base64.b64decode(PNG_BASE64) + bytes(range(256)) * 64
PROMPT = "A lighthouse at dusk, in watercolour."
ADMIN_TOKEN = "dev-admin-token"  # the default config's, for the management API
# The default config's prices, USD per million tokens.
IMAGE_TEXT_IN, IMAGE_IN, IMAGE_OUT = Decimal("5.00"), Decimal("10.00"), Decimal("40.00")
TEXT_IN, TEXT_OUT = Decimal("0.15"), Decimal("0.60")  # gpt-4o-mini


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    raw = default_config()
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": EDIT_KEY_ID, "key": EDIT_KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": LARGE_KEY_ID, "key": LARGE_KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": SKETCH_KEY_ID, "key": SKETCH_KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": RESET_KEY_ID, "key": RESET_KEY, "user_id": "ines"})
    raw["auth"]["api_keys"].append({"id": HANG_UP_KEY_ID, "key": HANG_UP_KEY, "user_id": "ines"})
    for key_id, key in [(CUT_BODY_KEY_ID, CUT_BODY_KEY), (TIMED_OUT_KEY_ID, TIMED_OUT_KEY)]:
        raw["auth"]["api_keys"].append({"id": key_id, "key": key, "user_id": "ines"})
    [edits] = [route for route in raw["routes"] if route["name"] == "openai-image-edits"]
    # Addresses in a prompt are masked (the edit whose spliced form must still parse).
    edits["guardrails"] = "no-addresses"
    raw["guardrails"] = {
        "policies": [
            {
                "name": "no-addresses",
                "request": [{"name": "email", "builtins": ["EMAIL"], "action": "mask"}],
            }
        ]
    }
    raw["quotas"] = {
        "rules": [
            {
                "name": "studio-tokens",
                "subject": "api_key",
                "match": [KEY_ID],
                "tokens_per_day": 100_000_000,
            },
            {
                "name": "sketch-tokens",
                "subject": "api_key",
                "match": [SKETCH_KEY_ID],
                "tokens_per_day": 100_000_000,
            },
            {
                "name": "cut-pictures-tokens",
                "subject": "api_key",
                "match": [RESET_KEY_ID, HANG_UP_KEY_ID, CUT_BODY_KEY_ID, TIMED_OUT_KEY_ID],
                "tokens_per_day": 100_000_000,
            },
        ]
    }
    workdir = Path(tmp_path_factory.mktemp("images"))
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


@pytest.fixture
def gateway_log(stack: LocalStack) -> GatewayLog:
    return GatewayLog(stack.gateway_log)


def client_of(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=KEY, max_retries=0)


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def picture_cost(prompt: int, output: int) -> Decimal:
    return (prompt * IMAGE_TEXT_IN + output * IMAGE_OUT) / 10**6


def test_pictures_are_billed_at_the_image_prices_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = client_of(stack)
    lines: list[dict[str, Any]] = []

    # The Images API, whole: two low-quality pictures.
    whole = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt=PROMPT, n=2, quality="low"
    )
    answer = whole.parse()
    assert answer.data is not None and len(answer.data) == 2
    assert format_of(base64.b64decode(answer.data[0].b64_json or "")) == "png"
    assert answer.usage is not None
    [line] = gateway_log.for_request(whole.headers["x-request-id"])
    assert (line["route"], line["http_status_code"]) == ("openai-images", 200)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )
    assert line["completion_image_tokens"] == 2 * OUTPUT_TOKENS["low"]
    assert cost(line) == picture_cost(count_tokens(PROMPT), 2 * OUTPUT_TOKENS["low"])
    lines.append(line)
    # The provider got the gateway's key at its own images endpoint, not the client's.
    sent = [r for r in mock_requests(stack) if r["path"].endswith("/images/generations")]
    assert sent and sent[-1]["headers"]["authorization"] != f"Bearer {KEY}"

    # The Images API, streamed: a partial picture, then the completed one with its usage.
    stream = client.images.generate(
        model="gpt-image-1", prompt=PROMPT, stream=True, partial_images=1, quality="medium"
    )
    events = list(stream)
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    streamed = wait_for(
        lambda: [
            found
            for found in gateway_log.lines()
            if found.get("route") == "openai-images" and found.get("stream")
        ],
        10,
    )
    [line] = streamed
    assert line["completion_image_tokens"] == OUTPUT_TOKENS["medium"]
    assert line["usage_reported"] is True
    lines.append(line)

    # The Responses API's image_generation tool: the answer's usage is gpt-4o-mini's,
    # the picture's (tool_usage.image_gen) gpt-image-1's.
    drawn = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Draw a lighthouse.", tools=[{"type": "image_generation"}]
    )
    response = drawn.parse()
    assert response.usage is not None and response.tool_usage is not None
    gen = response.tool_usage.image_gen
    [line] = gateway_log.for_request(drawn.headers["x-request-id"])
    assert line["image_generation_model"] == "gpt-image-1"
    assert (line["image_generation_input_tokens"], line["image_generation_output_tokens"]) == (
        gen.input_tokens,
        gen.output_tokens,
    )
    # Parts of the request's counts, beside the answering model's own usage.
    assert line["prompt_tokens"] == response.usage.input_tokens + gen.input_tokens
    assert line["completion_tokens"] == response.usage.output_tokens + gen.output_tokens
    answered = response.usage.input_tokens * TEXT_IN + response.usage.output_tokens * TEXT_OUT
    assert cost(line) == answered / 10**6 + picture_cost(gen.input_tokens, gen.output_tokens)
    lines.append(line)

    billed = sum(cost(each) for each in lines)
    samples = scrape(stack.metrics_url)
    assert metric(samples, "aigw_cost_usd_total", api_key_id=KEY_ID) == float(billed)
    drawn_tokens = metric(
        samples, "aigw_token_parts_total", api_key_id=KEY_ID, token_type="image_generation_output"
    )
    assert drawn_tokens == gen.output_tokens
    pictures = metric(
        samples, "aigw_token_parts_total", api_key_id=KEY_ID, token_type="completion_image"
    )
    assert pictures == 2 * OUTPUT_TOKENS["low"] + OUTPUT_TOKENS["medium"]

    # The report (and through it the rollups) and the quota hold the same.
    row = wait_for(lambda: (found := usage_rows(stack, "api_key").get(KEY_ID)) and (
        found["requests"] == 3 and found), 20)  # fmt: skip
    assert row, "no rollup of the three requests"
    assert Decimal(row["cost_usd"]) == billed
    assert row["image_generation_output_tokens"] == gen.output_tokens
    assert row["completion_image_tokens"] == pictures
    total = sum(each["total_tokens"] for each in lines)
    assert row["total_tokens"] == total
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as quotas:
        state = quotas.get("api_key", KEY_ID)
    used = sum(limit.used for limit in state.limits if limit.kind == "tokens")
    assert used == total


def test_a_streamed_generation_of_two_pictures_is_billed_both_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """``images.generate(stream=True, n=2)``: the provider sends each picture's events,
    each completed one with that picture's usage. The client gets both pictures, and the
    log line, the metrics, the rollup and the quota bill both (before, the last event's
    usage replaced the first's: one picture was billed)."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=SKETCH_KEY, max_retries=0)
    stream = client.images.generate(
        model="gpt-image-1", prompt=PROMPT, stream=True, n=2, partial_images=1, quality="low"
    )
    events = list(stream)
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ] * 2
    reported = [event.usage for event in events if event.type == "image_generation.completed"]
    prompt = sum(usage.input_tokens for usage in reported)
    drawn = sum(usage.output_tokens for usage in reported)
    assert (prompt, drawn) == (2 * count_tokens(PROMPT), 2 * OUTPUT_TOKENS["low"])
    [line] = wait_for(
        lambda: [
            found for found in gateway_log.lines() if found.get("api_key_id") == SKETCH_KEY_ID
        ],
        10,
    )
    assert line["usage_reported"] is True and line["usage_estimated"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, drawn)
    assert line["completion_image_tokens"] == drawn
    billed = picture_cost(prompt, drawn)
    assert cost(line) == billed

    samples = scrape(stack.metrics_url)
    consumed = metric(samples, "tokens_consumed_total", api_key_id=SKETCH_KEY_ID)
    assert consumed == prompt + drawn
    assert metric(samples, "aigw_cost_usd_total", api_key_id=SKETCH_KEY_ID) == float(billed)
    row = wait_for(lambda: usage_rows(stack, "api_key").get(SKETCH_KEY_ID), 20)
    assert row, "no rollup of the stream"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, drawn)
    assert Decimal(row["cost_usd"]) == billed
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as quotas:
        state = quotas.get("api_key", SKETCH_KEY_ID)
    assert sum(limit.used for limit in state.limits if limit.kind == "tokens") == prompt + drawn


# A low-quality square picture of the Responses API's image generation tool: the quota
# reserves 272 output tokens for it (images_api), what OpenAI bills such a picture.
LOW_SQUARE_TOOL: ImageGenerationTool = {
    "type": "image_generation",
    "quality": "low",
    "size": "1024x1024",
}
LOW_SQUARE_PICTURE = 272


def assert_cut_picture_billed_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog, key_id: str
) -> dict[str, Any]:
    """The one request of ``key_id``, a Responses call cut while its image generation
    tool drew: its picture is charged as the quota reserved it, at gpt-image-1's image
    output price, in the log line, the metrics, the rollup and the quota."""
    [line] = wait_for(
        lambda: [found for found in gateway_log.lines() if found.get("api_key_id") == key_id], 10
    )
    assert line["route"] == "openai-responses"
    assert line["usage_estimated"] is True
    assert line["image_generation_model"] == "gpt-image-1"
    assert (line["image_generation_output_tokens"], line["image_generation_input_tokens"]) == (
        LOW_SQUARE_PICTURE,
        0,
    )
    assert line["image_generation_output_image_tokens"] == LOW_SQUARE_PICTURE
    # The answer's own estimate at gpt-4o-mini's prices, the picture at gpt-image-1's.
    text_out = line["completion_tokens"] - LOW_SQUARE_PICTURE
    assert text_out >= 0
    billed = (
        line["prompt_tokens"] * TEXT_IN + text_out * TEXT_OUT + LOW_SQUARE_PICTURE * IMAGE_OUT
    ) / 10**6
    assert cost(line) == billed

    samples = scrape(stack.metrics_url)
    drawn = metric(
        samples, "aigw_token_parts_total", api_key_id=key_id, token_type="image_generation_output"
    )
    assert drawn == LOW_SQUARE_PICTURE
    consumed = metric(samples, "tokens_consumed_total", api_key_id=key_id)
    assert consumed == line["total_tokens"]
    assert metric(samples, "aigw_cost_usd_total", api_key_id=key_id) == float(billed)

    row = wait_for(lambda: usage_rows(stack, "api_key").get(key_id), 20)
    assert row, "no rollup of the cut stream"
    assert row["image_generation_output_tokens"] == LOW_SQUARE_PICTURE
    assert row["total_tokens"] == line["total_tokens"]
    assert Decimal(row["cost_usd"]) == billed
    with QuotaClient(f"127.0.0.1:{stack.ports.management}", ADMIN_TOKEN) as quotas:
        state = quotas.get("api_key", key_id)
    used = sum(limit.used for limit in state.limits if limit.kind == "tokens")
    assert used == line["total_tokens"]
    return line


def test_a_picture_the_provider_reset_while_drawing_is_billed_as_reserved(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """A Responses stream with the image generation tool whose provider drops the
    connection after the picture's events and before ``response.completed`` (the only
    event that reports the picture, in ``tool_usage.image_gen``). Before, the picture
    was free: the line's ``image_generation_output_tokens`` 0, the quota charged the
    text estimate alone. Now it is charged as a cut Images API stream is: the picture's
    reserve, at the image model's price, ``usage_estimated``."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=RESET_KEY, max_retries=0)
    # The mock shows the picture's call (added, in progress, generating, completed) before
    # the message, then drops the connection before the first text delta. Its events are
    # paced: a chunk still on its way to the gateway when the provider resets is dropped
    # by Envoy (docs/logging.md), and under load back-to-back events all were.
    with pytest.raises(openai.APIError):
        stream = client.responses.create(
            model="gpt-4o-mini",
            input="Draw a lighthouse.",
            tools=[LOW_SQUARE_TOOL],
            stream=True,
            extra_headers={"x-mock-fault": "interval=0.05;reset_after=0"},
        )
        for _ in stream:
            pass
    assert_cut_picture_billed_in_every_ledger(stack, gateway_log, RESET_KEY_ID)


def test_a_picture_the_client_hung_up_on_while_drawing_is_billed_as_reserved(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The same stream, its client gone once the picture was being drawn (its
    ``response.image_generation_call.generating`` event): the provider draws it all the
    same, and the gateway charges it as reserved."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=HANG_UP_KEY, max_retries=0)
    # Events a quarter second apart: the client leaves long before the last.
    with client.responses.create(
        model="gpt-4o-mini",
        input="Draw a lighthouse.",
        tools=[LOW_SQUARE_TOOL],
        stream=True,
        extra_headers={"x-mock-fault": "interval=0.25"},
    ) as stream:
        for event in stream:
            if event.type == "response.image_generation_call.generating":
                break
        else:
            pytest.fail("the stream showed no picture being drawn")
    assert_cut_picture_billed_in_every_ledger(stack, gateway_log, HANG_UP_KEY_ID)


# The same tool naming its model: a non-streamed answer that never came whole shows none.
NAMED_LOW_SQUARE_TOOL: ImageGenerationTool = {**LOW_SQUARE_TOOL, "model": "gpt-image-1"}
# The answer's allowance the quota reserves beside the picture.
ALLOWANCE = 120


def test_a_whole_answer_the_provider_reset_mid_body_is_billed_its_picture(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """A non-streamed Responses call with the image generation tool whose provider sent
    its 200 and half the body, then dropped the connection. Before, it was charged the
    prompt estimate and the text allowance, the picture the quota reserved beside them
    free (``image_generation_output_tokens`` 0), while a cut stream is charged each
    picture it had begun. Now the reserved picture is charged too, at gpt-image-1's
    price, ``usage_estimated``."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=CUT_BODY_KEY, max_retries=0)
    with pytest.raises(openai.APIError):
        client.responses.create(
            model="gpt-4o-mini",
            input="Draw a lighthouse.",
            tools=[NAMED_LOW_SQUARE_TOOL],
            max_output_tokens=ALLOWANCE,
            extra_headers={"x-mock-fault": "reset_in_body=1"},
        )
    line = assert_cut_picture_billed_in_every_ledger(stack, gateway_log, CUT_BODY_KEY_ID)
    assert line["completion_tokens"] == ALLOWANCE + LOW_SQUARE_PICTURE


def test_a_whole_answer_the_client_left_before_is_billed_its_picture(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The same call, its client timed out before any answer came: the provider goes on
    generating (and drawing) and bills it; the gateway charges the allowance and the
    picture as reserved."""
    client = OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=TIMED_OUT_KEY, max_retries=0, timeout=1.5
    )
    with pytest.raises(openai.APITimeoutError):
        client.responses.create(
            model="gpt-4o-mini",
            input="Draw a lighthouse.",
            tools=[NAMED_LOW_SQUARE_TOOL],
            max_output_tokens=ALLOWANCE,
            extra_headers={"x-mock-fault": "delay=4"},
        )
    line = assert_cut_picture_billed_in_every_ledger(stack, gateway_log, TIMED_OUT_KEY_ID)
    assert line["completion_tokens"] == ALLOWANCE + LOW_SQUARE_PICTURE


def test_the_model_list_names_the_image_models_a_key_can_draw_with(stack: LocalStack) -> None:
    """``client.models.list()`` through the gateway names every model the key can use,
    the image models the Images API routes serve among them."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=SKETCH_KEY, max_retries=0)
    names = {model.id for model in client.models.list()}
    assert {"gpt-image-1", "gpt-image-1-mini", "gpt-4o-mini"} <= names


def test_an_edit_reaches_the_provider_as_sent_and_is_billed_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog, tmp_path: Path
) -> None:
    """``client.images.edit`` with a picture file: before, a 400 ``unsupported_endpoint``
    ("take multipart/form-data, which this gateway does not serve"). Now the provider
    gets the form with its own key and the picture's bytes intact, the client its
    picture, and the log line, ``tokens_consumed_total``, the cost and the usage report
    agree on the answer's counts: the prompt's text, the given picture's image tokens
    (at ``image_input_per_million``) and the drawn picture's."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=EDIT_KEY, max_retries=0)
    boat = tmp_path / "boat.png"
    boat.write_bytes(BOAT)
    before = scrape(stack.metrics_url)
    with boat.open("rb") as picture:
        edited = client.images.with_raw_response.edit(
            model="gpt-image-1", image=picture, prompt=EDIT_PROMPT, quality="low"
        )
    answer = edited.parse()
    assert answer.data is not None and len(answer.data) == 1
    assert format_of(base64.b64decode(answer.data[0].b64_json or "")) == "png"

    # What reached the provider: its key, not the client's, and the picture as it was.
    [sent] = [r for r in mock_requests(stack) if r["path"].endswith("/images/edits")]
    assert sent["headers"]["authorization"] not in (f"Bearer {EDIT_KEY}", None)
    assert base64.b64decode(sent["body_base64"]).count(BOAT) == 1
    assert sent["headers"]["content-type"].startswith("multipart/form-data; boundary=")

    text, given, drawn = count_tokens(EDIT_PROMPT), EDIT_IMAGE_TOKENS, OUTPUT_TOKENS["low"]
    [line] = gateway_log.for_request(edited.headers["x-request-id"])
    assert (line["route"], line["http_status_code"], line["model"]) == (
        "openai-image-edits",
        200,
        "gpt-image-1",
    )
    assert (line["prompt_tokens"], line["prompt_image_tokens"]) == (text + given, given)
    assert (line["completion_tokens"], line["completion_image_tokens"]) == (drawn, drawn)
    billed = (text * IMAGE_TEXT_IN + given * IMAGE_IN + drawn * IMAGE_OUT) / 10**6
    assert cost(line) == billed

    after = scrape(stack.metrics_url)
    for token_type, count in [("prompt", text + given), ("completion", drawn)]:
        grew = metric(
            after, "tokens_consumed_total", api_key_id=EDIT_KEY_ID, token_type=token_type
        ) - metric(before, "tokens_consumed_total", api_key_id=EDIT_KEY_ID, token_type=token_type)
        assert grew == count, token_type
    assert metric(after, "aigw_cost_usd_total", api_key_id=EDIT_KEY_ID) == float(billed)

    row = wait_for(lambda: usage_rows(stack, "api_key").get(EDIT_KEY_ID), 20)
    assert row, "no rollup of the edit"
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        1,
        text + given,
        drawn,
    )
    assert Decimal(row["cost_usd"]) == billed


def test_a_streamed_edit_is_billed_by_its_completed_event(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """``stream=True``: the provider's image_edit events pass as they came; the
    completed one's usage is billed (the test above holds this key's ledgers)."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=EDIT_KEY, max_retries=0)
    stream = client.images.edit(
        model="gpt-image-1",
        image=("boat.png", BOAT, "image/png"),
        prompt=EDIT_PROMPT,
        stream=True,
        partial_images=1,
        quality="low",
    )
    assert [event.type for event in stream] == ["image_edit.partial_image", "image_edit.completed"]
    [line] = wait_for(
        lambda: [
            found
            for found in gateway_log.lines()
            if found.get("api_key_id") == EDIT_KEY_ID and found.get("stream")
        ],
        10,
    )
    assert line["usage_reported"] is True
    assert (line["prompt_image_tokens"], line["completion_image_tokens"]) == (
        EDIT_IMAGE_TOKENS,
        OUTPUT_TOKENS["low"],
    )


def test_an_edit_whose_prompt_a_guard_masked_reaches_the_provider_as_a_valid_form(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The masked prompt is shorter than the client's: the form the provider gets is
    spliced, so its length changes. It arrives whole through Envoy: its content-length
    the spliced form's, every part in place, the picture's bytes (CRs, LFs and dashes
    among them) intact, the prompt the guard's; the provider's own parser reads it, and
    bills the masked prompt's tokens."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=EDIT_KEY, max_retries=0)
    prompt = "Write bob.smith@example.com on the boat's sail."
    edited = client.images.with_raw_response.edit(
        model="gpt-image-1", image=("boat.png", BOAT, "image/png"), prompt=prompt, quality="low"
    )
    assert edited.parse().data is not None

    [sent] = [
        found
        for found in mock_requests(stack)
        if found["path"].endswith("/images/edits")
        and b"bob.smith" not in base64.b64decode(found["body_base64"])
        and b"sail" in base64.b64decode(found["body_base64"])
    ]
    body = base64.b64decode(sent["body_base64"])
    assert int(sent["headers"]["content-length"]) == len(body)
    received = read_form(body, sent["headers"]["content-type"])
    masked = received.fields["prompt"]
    assert "bob.smith@example.com" not in masked and masked.endswith("on the boat's sail.")
    assert received.fields["model"] == "gpt-image-1"
    [picture] = received.files
    assert (picture.name, body[picture.start : picture.end]) == ("image", BOAT)

    [line] = gateway_log.for_request(edited.headers["x-request-id"])
    assert line["http_status_code"] == 200
    assert line["prompt_tokens"] == count_tokens(masked) + EDIT_IMAGE_TOKENS


def test_edits_take_large_pictures_while_generations_and_chat_keep_1_mib(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    """The default config: the edit routes take 64 MiB, every other route the default
    1 MiB, image generations' included. Before, one Images API route took 64 MiB for
    its every path: a 2 MiB generation (JSON) was buffered, parsed and sent on to the
    provider. Now it gets a 413 in OpenAI's shape, as a 2 MiB chat request does, while
    a 3 MiB edit passes Envoy's buffer to the provider with its picture whole and is
    billed."""
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=LARGE_KEY, max_retries=0)
    poster = BOAT * 192  # 3 MiB
    assert 3 * MIB <= len(poster) < EDITS_BODY_LIMIT
    edited = client.images.with_raw_response.edit(
        model="gpt-image-1",
        image=("poster.png", poster, "image/png"),
        prompt=EDIT_PROMPT,
        quality="low",
    )
    assert edited.parse().data
    # The provider got the picture whole, with its own key.
    [sent] = [
        r
        for r in mock_requests(stack)
        if r["path"].endswith("/images/edits")
        and base64.b64decode(r["body_base64"]).count(poster) == 1
    ]
    assert sent["headers"]["authorization"] not in (f"Bearer {LARGE_KEY}", None)
    [line] = gateway_log.for_request(edited.headers["x-request-id"])
    assert (line["route"], line["http_status_code"]) == ("openai-image-edits", 200)
    given, drawn = EDIT_IMAGE_TOKENS, OUTPUT_TOKENS["low"]
    assert (line["prompt_image_tokens"], line["completion_tokens"]) == (given, drawn)
    assert cost(line) > 0
    completion = metric(
        scrape(stack.metrics_url),
        "tokens_consumed_total",
        api_key_id=LARGE_KEY_ID,
        token_type="completion",
    )
    assert completion == drawn

    generations_before = len(
        [r for r in mock_requests(stack) if r["path"].endswith("/images/generations")]
    )
    # A valid prompt, and 2 MiB of JSON beside it (the end user's id, which no check reads).
    refusals = [
        lambda: client.images.generate(
            model="gpt-image-1", prompt=PROMPT, quality="low", user="x" * (2 * MIB)
        ),
        lambda: client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * (2 * MIB)}]
        ),
    ]
    for call in refusals:
        with pytest.raises(openai.APIStatusError) as refused:
            call()
        assert refused.value.status_code == 413
        error = refused.value.body
        assert isinstance(error, dict)
        # In OpenAI's shape whoever refused it: the gateway from its declared length, or
        # Envoy, when more than the path's buffer (1 MiB + 64 KiB) came before the
        # gateway's answer to the headers did.
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    generations = [r for r in mock_requests(stack) if r["path"].endswith("/images/generations")]
    assert len(generations) == generations_before
    assert not [r for r in mock_requests(stack) if r["path"].endswith("/chat/completions")]


def test_image_variations_are_a_clear_400_in_openais_shape(stack: LocalStack) -> None:
    client = client_of(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(model="dall-e-2", image=("a.png", b"\x89PNG"))
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_endpoint"
    assert "/v1/images/edits" in error["message"]
