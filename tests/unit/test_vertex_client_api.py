"""Vertex AI's paths for Claude, as AnthropicVertex and Claude Code's Vertex mode call them:
what the gateway reads of a path (the model, or a token count), the paths it refuses with a
404, and the config's rules for an anthropic_vertex route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.loader import ConfigError, parse_config
from extproc.config.model import GatewayConfig, RouteApi
from extproc.errors import NotFoundError
from extproc.vertex_client_api import VertexCall, read_path

LOCATION = "/vertex/projects/my-project/locations/us-east5"


def default_config() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    return raw


@pytest.mark.parametrize(
    ("path", "call"),
    [
        (
            f"{LOCATION}/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            VertexCall("claude-sonnet-4-5@20250929", counts_tokens=False),
        ),
        (
            f"{LOCATION}/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
            VertexCall("claude-sonnet-4-5@20250929", counts_tokens=False),
        ),
        # The SDK encodes a ";" of the model (a server could cut the segment there).
        (
            f"{LOCATION}/publishers/anthropic/models/claude-x%3Bv2:rawPredict",
            VertexCall("claude-x;v2", counts_tokens=False),
        ),
        (
            f"{LOCATION}/publishers/anthropic/models/claude-haiku%404-5:rawPredict",
            VertexCall("claude-haiku@4-5", counts_tokens=False),
        ),
        # A Bedrock model id keeps its colon: the operation is after the last one.
        (
            f"{LOCATION}/publishers/anthropic/models/anthropic.claude-v1:0:rawPredict",
            VertexCall("anthropic.claude-v1:0", counts_tokens=False),
        ),
        (
            f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict",
            VertexCall(None, counts_tokens=True),
        ),
        # A base URL that ends in Google's /v1, and a query, change nothing.
        (
            "/vertex/v1/projects/p/locations/global/publishers/anthropic/models/claude-a:rawPredict"
            "?beta=true",
            VertexCall("claude-a", counts_tokens=False),
        ),
    ],
)
def test_the_path_names_the_model_or_a_count(path: str, call: VertexCall) -> None:
    assert read_path(path) == call


@pytest.mark.parametrize(
    ("path", "said"),
    [
        (
            f"{LOCATION}/publishers/google/models/gemini-2.5-flash:rawPredict",
            "publishers/anthropic",
        ),
        (f"{LOCATION}/publishers/anthropic/models/claude-a:predict", "rawPredict"),
        (f"{LOCATION}/publishers/anthropic/models/claude-a:generateContent", "rawPredict"),
        (f"{LOCATION}/publishers/anthropic/models/claude-a", "rawPredict"),
        (f"{LOCATION}/publishers/anthropic/models/:rawPredict", "rawPredict"),
        (f"{LOCATION}/publishers/anthropic/models/count-tokens:streamRawPredict", "count-tokens"),
        ("/vertex/projects/p/locations/r/publishers/anthropic/claude-a:rawPredict", "projects/"),
        ("/vertex/v1/messages", "projects/"),
        ("/vertex", "projects/"),
        (
            "/vertex/projects//locations/r/publishers/anthropic/models/claude-a:rawPredict",
            "projects/",
        ),
    ],
)
def test_another_path_is_a_404_that_says_what_is_served(path: str, said: str) -> None:
    with pytest.raises(NotFoundError) as refused:
        read_path(path)
    assert said in refused.value.message


def config_with(route: dict[str, Any]) -> GatewayConfig:
    raw = default_config()
    raw["routes"].insert(0, route)
    return parse_config(yaml.safe_dump(raw), "test", {})


def test_an_anthropic_vertex_route_is_a_prefix_route() -> None:
    config = config_with(
        {"name": "vertex-clients", "path_prefix": "/vertex", "api": "anthropic_vertex"}
    )
    assert config.routes[0].api is RouteApi.ANTHROPIC_VERTEX
    with pytest.raises(ConfigError, match="path_prefix"):
        config_with({"name": "vertex-clients", "path": "/vertex", "api": "anthropic_vertex"})


@pytest.mark.parametrize(
    "naming", [{"model_from_path": True}, {"model_header": "model"}, {"model_query": "model"}]
)
def test_the_path_alone_names_the_model_on_an_anthropic_vertex_route(
    naming: dict[str, Any],
) -> None:
    route = {"name": "vertex-clients", "path_prefix": "/vertex", "api": "anthropic_vertex"}
    with pytest.raises(ConfigError, match="names the model"):
        config_with({**route, **naming})


def test_the_count_is_no_routes_own_api() -> None:
    with pytest.raises(ConfigError, match="anthropic_vertex route"):
        config_with(
            {
                "name": "vertex-count",
                "path_prefix": "/vertex",
                "api": "anthropic_vertex_count_tokens",
            }
        )


def test_the_built_in_routes_serve_vertex_clients_under_vertex() -> None:
    raw = default_config()
    del raw["routes"]
    config = parse_config(yaml.safe_dump(raw), "test", {})
    [route] = [r for r in config.routes if r.api is RouteApi.ANTHROPIC_VERTEX]
    assert route.path_prefix == "/vertex"
