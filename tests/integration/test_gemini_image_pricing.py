"""A picture from Gemini's image model is billed at the image price, through the real
stack: Envoy, the gateway, its embedded Valkey and the mock's Vertex AI, driven by
Google's ``google-genai`` SDK.

Gemini 2.5 Flash Image counts a picture in ``candidatesTokenCount`` and names it in
``candidatesTokensDetails`` (the ``IMAGE`` entry, 1,290 tokens for a 1024x1024 image),
billed at $30 per million against $2.50 of text. Before, the gateway billed every
completion token at the text price. The log line, the cost counter,
``aigw_token_parts_total`` and ``extproc usage report`` (from the store and through the
management API) now agree on the picture's count and its image-priced cost, whole and
streamed.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

import orjson
from google import genai
from google.genai import types

from extproc.devstack import LocalStack
from extproc.mock_llm.vertex_gemini import IMAGE_TOKENS
from tests.integration.conftest import GatewayLog, metric, scrape, wait_for
from tests.integration.mock_vertex import stack_serving, vertex_config

MODEL = "gemini-2.5-flash-image"
KEY_ID, KEY = "design-team", "design-team-key-3c1a"
ADMIN_TOKEN = "dev-admin-token"  # the default config's, for the management API
# USD per million: input, text output, image output (2.5 Flash Image's list prices).
TEXT_IN, TEXT_OUT, IMAGE_OUT = (Decimal(p) for p in ("0.30", "2.50", "30.00"))


def image_config() -> dict[str, Any]:
    raw = vertex_config({MODEL: f"google/{MODEL}"})
    raw["auth"]["api_keys"].append({"id": KEY_ID, "key": KEY})
    raw["pricing"]["models"][MODEL] = {
        "input_per_million": str(TEXT_IN),
        "output_per_million": str(TEXT_OUT),
        "image_output_per_million": str(IMAGE_OUT),
    }
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"}
    )
    return raw


stack = stack_serving(image_config, "gemini-image")
# The SDK closes its connections when its Client is collected.
CLIENTS: list[genai.Client] = []


def client(stack: LocalStack) -> Any:
    options = types.HttpOptions(base_url=stack.base_url, timeout=30_000)
    made = genai.Client(api_key=KEY, http_options=options)
    CLIENTS.append(made)
    return made


def priced(prompt: int, completion: int, image: int) -> Decimal:
    return (prompt * TEXT_IN + (completion - image) * TEXT_OUT + image * IMAGE_OUT) / 10**6


def report(stack: LocalStack, *extra: str) -> dict[str, Any]:
    """``extproc usage report --by api_key`` as the operator runs it, this key's row."""
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--by", "api_key", "--format",
         "json", "--config", str(stack.config_path), *extra],
        env=stack.env, capture_output=True, check=True,
    )  # fmt: skip
    rows = orjson.loads(result.stdout)["rows"]
    return next((row for row in rows if row["api_key_id"] == KEY_ID), {})


def test_a_picture_is_billed_at_the_image_price_in_every_ledger(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sdk = client(stack)
    whole = sdk.models.generate_content(model=MODEL, contents="Draw a cat on a mat.")
    ids = [whole.sdk_http_response.headers["x-request-id"]]
    usages = [whole.usage_metadata]
    [picture] = [part for part in whole.candidates[0].content.parts if part.inline_data]
    assert picture.inline_data.mime_type == "image/png"
    chunks = list(sdk.models.generate_content_stream(model=MODEL, contents="Draw a dog."))
    ids.append(chunks[-1].sdk_http_response.headers["x-request-id"])
    usages.append(chunks[-1].usage_metadata)

    lines = [gateway_log.for_request(found)[0] for found in ids]
    for line, usage in zip(lines, usages, strict=True):
        [image] = [d.token_count for d in usage.candidates_tokens_details if d.modality == "IMAGE"]
        assert image == IMAGE_TOKENS
        assert (line["prompt_tokens"], line["completion_tokens"]) == (
            usage.prompt_token_count,
            usage.candidates_token_count,
        )
        assert line["completion_image_tokens"] == IMAGE_TOKENS
        # Before: the picture at the text price, a twelfth of this.
        assert Decimal(str(line["cost_usd"])) == priced(
            usage.prompt_token_count, usage.candidates_token_count, IMAGE_TOKENS
        )
    billed = sum(Decimal(str(line["cost_usd"])) for line in lines)

    samples = scrape(stack.metrics_url)
    assert metric(samples, "aigw_cost_usd_total", api_key_id=KEY_ID) == float(billed)
    parts = metric(
        samples, "aigw_token_parts_total", api_key_id=KEY_ID, token_type="completion_image"
    )
    assert parts == 2 * IMAGE_TOKENS

    row = wait_for(lambda: (found := report(stack)) and found["requests"] == 2 and found, 20)
    assert row, "no rollup of the two requests"
    assert row["completion_image_tokens"] == 2 * IMAGE_TOKENS
    assert Decimal(row["cost_usd"]) == billed
    assert Decimal(row["cost_usd"]) == priced(
        row["prompt_tokens"], row["completion_tokens"], row["completion_image_tokens"]
    )
    # The same through the gateway's management API, whose answer carries the new field.
    assert report(stack, "--api", "--token", ADMIN_TOKEN) == row
