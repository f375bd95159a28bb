"""``GET /v1/models/{model}``: the SDKs' ``models.retrieve``, answered by the gateway.

Tools call it to check a model before using it (a chat UI's settings, an agent
framework's start-up). It was a 404 ``route_not_found`` on ``/v1`` and a 405 "use
POST" under ``/openai/v1`` (the chat prefix took it), for a model the gateway serves.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml

from extproc.config.loader import parse_config
from extproc.config.model import GatewayConfig, RouteApi
from extproc.controller_routes import HTTP_ROUTE_PREFIX
from extproc.gateway_api import CONTROLLERS, Controller, render_attachments
from extproc.processor import Processor
from extproc.runtime import RouteTable, Services
from extproc.testing import processor_for, request_headers, run_stream
from tests.unit.quota_helpers import DEFAULT_CONFIG

ALICE = {"authorization": "Bearer team1-key"}


async def get(processor: Processor, path: str, method: str = "GET") -> tuple[int, Any]:
    [answer] = await run_stream(processor, [request_headers(path, method=method, headers=ALICE)])
    reply = answer.immediate_response
    return int(reply.status.code), orjson.loads(reply.body) if reply.body else None


@pytest.mark.parametrize(
    "path", ["/v1/models/gpt-4o", "/openai/v1/models/gpt-4o", "/openai/models/gpt-4o"]
)
async def test_a_served_model_is_retrieved_on_every_models_path(
    processor: Processor, path: str
) -> None:
    status, model = await get(processor, path)
    assert status == 200
    assert model["id"] == "gpt-4o" and model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"]


async def test_a_percent_encoded_name_and_an_alias_are_retrieved(processor: Processor) -> None:
    # The SDKs encode the path parameter: a Bedrock id's colon comes as %3A.
    status, model = await get(processor, "/v1/models/anthropic.claude-3-haiku-20240307-v1%3A0")
    assert (status, model["id"]) == (200, "anthropic.claude-3-haiku-20240307-v1:0")
    status, model = await get(processor, "/v1/models/haiku")
    assert (status, model["id"]) == (200, "haiku")


async def test_an_unknown_model_is_an_openai_404(processor: Processor) -> None:
    status, error = await get(processor, "/v1/models/gpt-9")
    assert status == 404
    assert error["error"]["code"] == "model_not_found"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "model"
    assert "'gpt-9'" in error["error"]["message"]


async def test_a_model_kept_from_the_key_is_answered_as_unknown(services: Services) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    raw["auth"]["api_keys"][0]["allowed_models"] = ["gpt-4o-mini"]
    processor = processor_for(parse_config(yaml.safe_dump(raw), "t", {}), services)
    assert (await get(processor, "/v1/models/gpt-4o-mini"))[0] == 200
    kept_status, kept = await get(processor, "/v1/models/gpt-4o")
    unknown_status, unknown = await get(processor, "/v1/models/no-such-model")
    # One answer for both: a key learns nothing of the models kept from it.
    assert kept_status == unknown_status == 404
    assert kept["error"]["message"].replace("gpt-4o", "X") == unknown["error"]["message"].replace(
        "no-such-model", "X"
    )


async def test_a_model_is_only_read(processor: Processor) -> None:
    [answer] = await run_stream(
        processor, [request_headers("/openai/v1/models/gpt-4o", method="DELETE", headers=ALICE)]
    )
    assert answer.immediate_response.status.code == 405
    allowed = {
        h.header.key: h.header.raw_value for h in answer.immediate_response.headers.set_headers
    }
    assert allowed["allow"] == b"GET, HEAD"


def test_a_gemini_route_declared_on_the_same_prefix_keeps_its_paths() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG)
    gemini = {"name": "gemini", "path_prefix": "/v1/models", "api": "gemini_generate_content"}
    raw["routes"] = [gemini, *raw["routes"]]
    config = parse_config(yaml.safe_dump(raw), "t", {})
    table = RouteTable(config)
    found = table.resolve("/v1/models/gemini-2.5-flash:generateContent")
    assert found is not None and found.api is RouteApi.GEMINI_GENERATE_CONTENT


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_a_controller_sends_the_models_of_the_list_to_the_gateway(
    config: GatewayConfig, controller: Controller
) -> None:
    """Under a Gateway API controller, `/v1/models/{model}` must match the list's
    HTTPRoute too, or the controller answers 404 before the gateway sees it."""
    [route] = [
        item
        for item in render_attachments(config, controller)
        if item["metadata"]["name"] == HTTP_ROUTE_PREFIX + "openai-models"
    ]
    [rule] = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1/models"}}]


# --- Anthropic's clients: the same names, in Anthropic's shape ---------------------------

ANTHROPIC_CLIENT = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}


async def anthropic_get(processor: Processor, path: str) -> tuple[int, Any]:
    [answer] = await run_stream(
        processor, [request_headers(path, method="GET", headers=ANTHROPIC_CLIENT)]
    )
    reply = answer.immediate_response
    return int(reply.status.code), orjson.loads(reply.body)


async def test_an_anthropic_client_pages_through_the_same_names(processor: Processor) -> None:
    _, listed = await get(processor, "/v1/models")
    names = [model["id"] for model in listed["data"]]
    status, first = await anthropic_get(processor, "/v1/models?limit=3")
    assert status == 200
    assert [model["id"] for model in first["data"]] == names[:3]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (names[0], names[2])
    model = first["data"][0]
    assert model["type"] == "model" and model["display_name"] == names[0]
    assert model["created_at"].endswith("Z")
    # The SDK asks for the next page after the last id, until has_more is false.
    paged: list[str] = [entry["id"] for entry in first["data"]]
    after = first["last_id"]
    while True:
        _, more = await anthropic_get(processor, f"/v1/models?limit=3&after_id={after}")
        paged += [entry["id"] for entry in more["data"]]
        if not more["has_more"]:
            break
        after = more["last_id"]
    assert paged == names
    _, before = await anthropic_get(processor, f"/v1/models?limit=2&before_id={names[3]}")
    assert [entry["id"] for entry in before["data"]] == names[1:3]
    assert before["has_more"] is True


async def test_an_anthropic_client_retrieves_a_model_or_gets_its_404(
    processor: Processor,
) -> None:
    status, model = await anthropic_get(processor, "/v1/models/claude-sonnet-4-0")
    assert status == 200
    assert (model["type"], model["id"]) == ("model", "claude-sonnet-4-0")
    status, error = await anthropic_get(processor, "/v1/models/claude-9")
    assert status == 404
    assert error["type"] == "error" and error["error"]["type"] == "not_found_error"
    assert "'claude-9'" in error["error"]["message"]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "after_id=a&before_id=b"])
async def test_an_anthropic_clients_bad_page_is_a_400_in_its_shape(
    processor: Processor, query: str
) -> None:
    status, error = await anthropic_get(processor, f"/v1/models?{query}")
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
