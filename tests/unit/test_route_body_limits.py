"""A route's own body limit, ``routes[].max_request_body_bytes``.

Before, ``limits.max_request_body_bytes`` held every route: an operator who raised it
for the Images API's edits (pictures of megabytes) raised it for chat, embeddings and
every agent route too. Now a route may take more (or less) than the global limit: the
gateway's 413 names the limit that applied and whose it is, and Envoy buffers each
path's body up to its route's limit, no further (the integration test in
``tests/integration/test_image_generation.py`` sends a 3 MB edit through the real
Envoy while a 2 MB chat request gets its 413).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from extproc.config import ConfigError, parse_config
from extproc.config.model import GatewayConfig
from extproc.envoy_body_limits import NO_CLUSTER_DETAILS, ROUTE_PREFIX
from extproc.envoy_bootstrap import (
    BUFFER_SLACK_BYTES,
    EXT_PROC_CLUSTER,
    render_bootstrap,
    render_bootstrap_yaml,
)
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_envoy_bootstrap import ENVOY, assert_envoy_accepts
from tests.unit.test_envoy_limits import clusters, hcm, routes
from tests.unit.test_guard_flow import AUTH, Gateway, immediate

MIB = 1024 * 1024
GLOBAL_LIMIT = 4096
IMAGES_LIMIT = 64 * 1024


def default_with(routes_set: dict[str, dict[str, Any]], **limits: int) -> GatewayConfig:
    """The default config, its routes' fields and the limits section changed."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    raw["limits"].update(limits)
    for route in raw["routes"]:
        route.pop("max_request_body_bytes", None)
        route.update(routes_set.get(route["name"], {}))
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def small_limits() -> GatewayConfig:
    """Chat, image generations and every other route at 4 KiB; image edits at 64 KiB."""
    images = {"openai-image-edits": {"max_request_body_bytes": IMAGES_LIMIT}}
    return default_with(images, max_request_body_bytes=GLOBAL_LIMIT)


# The index of the default config's openai-images route, which the problems name.
IMAGES_INDEX = [
    route["name"]
    for route in yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))["routes"]
].index("openai-images")


def problems(route_limit: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        default_with({"openai-images": {"max_request_body_bytes": route_limit}})
    return raised.value.problems


# --- loading ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 64 * MIB + 1])
def test_a_route_limit_out_of_range_is_refused_naming_the_route_field(limit: int) -> None:
    [problem] = problems(limit)
    assert problem.startswith(f"routes[{IMAGES_INDEX}].max_request_body_bytes: "), problem
    assert str(limit) in problem


def test_a_route_limit_that_is_not_a_number_is_refused() -> None:
    [problem] = problems("50MB")
    assert problem.startswith(f"routes[{IMAGES_INDEX}].max_request_body_bytes: "), problem


def test_a_route_without_a_limit_of_its_own_takes_the_global_one() -> None:
    config = small_limits()
    by_name = {route.name: route for route in config.routes}
    assert by_name["openai-chat"].max_request_body_bytes is None
    assert config.request_body_limit(by_name["openai-chat"]) == GLOBAL_LIMIT
    assert config.request_body_limit(by_name["openai-images"]) == GLOBAL_LIMIT
    assert config.request_body_limit(by_name["openai-image-edits"]) == IMAGES_LIMIT
    assert config.largest_request_body_bytes() == IMAGES_LIMIT


def test_the_default_config_takes_large_forms_on_the_edit_and_audio_routes_alone() -> None:
    """Edits (multipart forms of pictures) take 64 MiB, transcriptions and translations
    (forms of an audio file of up to 25 MB) 26 MiB; generations are JSON and keep the
    1 MiB every other route keeps, text-to-speech and the audio prefix routes
    included. Before, the Images API's prefix routes took 64 MiB for both."""
    config = parse_config(Path("config/gateway.yaml").read_text(), "gateway.yaml", {})
    large = {r.name: r.path for r in config.routes if config.request_body_limit(r) > MIB}
    audio = {
        f"{name}-audio-{endpoint}": f"{base}/audio/{endpoint}"
        for endpoint in ("transcriptions", "translations")
        for name, base in (
            ("openai", "/v1"),
            ("openai-prefix", "/openai/v1"),
            ("openai-bare-prefix", "/openai"),
        )
    }
    assert large == {
        "openai-image-edits": "/v1/images/edits",
        "openai-prefix-image-edits": "/openai/v1/images/edits",
        "openai-bare-prefix-image-edits": "/openai/images/edits",
        **audio,
    }
    assert {config.request_body_limit(r) for r in config.routes if r.name in audio} == {26 * MIB}
    assert config.limits.max_request_body_bytes == MIB


# --- the gateway's 413 ----------------------------------------------------------------


def edit_form(picture_bytes: int) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request(
        "POST",
        "http://gateway/v1/images/edits",
        data={"model": "gpt-image-1", "prompt": "Add a boat.", "quality": "low"},
        files=[("image", ("boat.png", b"\x89PNG" + b"\0" * picture_bytes, "image/png"))],
    )
    return request.read(), {**AUTH, "content-type": request.headers["content-type"]}


async def test_a_chat_body_over_the_global_limit_is_a_413_naming_its_routes_limit() -> None:
    gateway = Gateway(small_limits())
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "%s"}]}' % (
        b"x" * GLOBAL_LIMIT
    )
    # Declared at the headers, or found on the body when none was declared.
    for declared in ({"content-length": str(len(body))}, {}):
        answers = await run_stream(
            gateway.processor,
            [
                request_headers("/v1/chat/completions", headers={**AUTH, **declared}),
                request_body(body),
            ],
        )
        status, error = immediate(answers[-1])
        assert status == 413
        assert error["error"]["code"] == "request_too_large"
        assert error["error"]["message"] == (
            f"request body of {len(body)} bytes is over the limit of {GLOBAL_LIMIT} bytes"
            " of route 'openai-chat'"
        )


async def test_an_edit_over_the_global_limit_passes_on_a_route_that_takes_it() -> None:
    gateway = Gateway(small_limits())
    body, sent = edit_form(16 * 1024)
    assert GLOBAL_LIMIT < len(body) < IMAGES_LIMIT
    sent["content-length"] = str(len(body))
    answers = await run_stream(
        gateway.processor,
        [request_headers("/v1/images/edits", headers=sent), request_body(body)],
    )
    assert not answers[-1].HasField("immediate_response")
    mutation = answers[-1].request_body.response.header_mutation
    assert "x-aigw-cluster" in {h.header.key for h in mutation.set_headers}


async def test_an_edit_over_its_routes_limit_is_a_413_naming_that_limit() -> None:
    gateway = Gateway(small_limits())
    body, sent = edit_form(IMAGES_LIMIT)
    for declared in ({"content-length": str(len(body))}, {}):
        answers = await run_stream(
            gateway.processor,
            [
                request_headers("/v1/images/edits", headers={**sent, **declared}),
                request_body(body),
            ],
        )
        status, error = immediate(answers[-1])
        assert status == 413
        assert error["error"]["message"] == (
            f"request body of {len(body)} bytes is over the limit of {IMAGES_LIMIT} bytes"
            " of route 'openai-image-edits'"
        )


async def test_an_agent_route_holds_a_tool_call_to_its_own_limit(config: GatewayConfig) -> None:
    """Agent routes take the limit on their route, as AI routes do: an MCP route kept
    to 2 KiB refuses a larger tool call (a JSON-RPC error its SDK reads), the A2A
    route beside it keeps the global 1 MiB and takes it."""
    agents = with_agents(config)
    routes_set = tuple(
        route.model_copy(update={"max_request_body_bytes": 2048}) if route.name == "mcp" else route
        for route in agents.routes
    )
    gateway = Gateway(agents.model_copy(update={"routes": routes_set}))
    call = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x" * 4096}},
        }
    )
    headers = {**TEAM2, "content-type": "application/json", "accept": "application/json"}
    refused = await run_stream(
        gateway.processor, [request_headers("/mcp", headers=headers), request_body(call)]
    )
    status, error = immediate(refused[-1])
    assert status == 413
    assert error["error"]["data"]["code"] == "request_too_large"
    assert "over the limit of 2048 bytes of route 'mcp'" in error["error"]["message"]
    taken = await run_stream(
        gateway.processor,
        [request_headers("/a2a/helper/", headers=headers), request_body(call)],
    )
    assert not taken[-1].HasField("immediate_response")


# --- Envoy's buffer ---------------------------------------------------------------------


def body_limit_routes(config: GatewayConfig) -> list[dict[str, Any]]:
    found = hcm(render_bootstrap(config))["route_config"]["virtual_hosts"][0]["routes"]
    return [route for route in found if route["name"].startswith(ROUTE_PREFIX)]


def test_envoy_buffers_each_path_up_to_its_routes_limit_and_a_little_more() -> None:
    """The slack lets a body just over the limit reach the gateway, whose 413 is in the
    client's API shape; Envoy's own would be its plain-text one, rewritten."""
    config = small_limits()
    limits = {
        next(iter(route["match"].values())): route["request_body_buffer_limit"]
        for route in body_limit_routes(config)
    }
    assert limits["/v1/images/edits"] == IMAGES_LIMIT + BUFFER_SLACK_BYTES
    assert limits["/v1/images"] == GLOBAL_LIMIT + BUFFER_SLACK_BYTES
    assert limits["/v1/chat/completions"] == GLOBAL_LIMIT + BUFFER_SLACK_BYTES
    # The listener's own limit stays the global one, for paths no route serves.
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == GLOBAL_LIMIT + BUFFER_SLACK_BYTES
    # The gateway's connection carries the largest body in one message.
    ext_proc = clusters(render_bootstrap(config))[EXT_PROC_CLUSTER]
    assert ext_proc["per_connection_buffer_limit_bytes"] >= 32 * MIB + BUFFER_SLACK_BYTES


def test_the_buffer_routes_match_as_the_gateway_does_after_every_route_it_names() -> None:
    """Exact paths first, then the longest prefix (`/openai/v1/images` before
    `/openai`); after the provider routes, which match once the gateway named one, and
    before the catch-all 404."""
    config = small_limits()
    names = list(routes(render_bootstrap(config)))
    buffers = body_limit_routes(config)
    first = names.index(buffers[0]["name"])
    assert all(not name.startswith(ROUTE_PREFIX) for name in names[:first])
    assert "provider_openai" in names[:first]
    assert names[-1] == "not_found"
    matches = [route["match"] for route in buffers]
    exact = [m for m in matches if "path" in m]
    assert matches[: len(exact)] == exact
    prefixes = [m["path_separated_prefix"] for m in matches[len(exact) :]]
    assert prefixes == sorted(prefixes, key=len, reverse=True)
    assert prefixes.index("/openai/v1/images") < prefixes.index("/openai")
    for route in buffers:
        # Forwarded where the gateway names; unnamed, Envoy's 404 gets the catch-all's body.
        assert route["route"]["cluster_header"] == "x-aigw-cluster"
        assert route["route"]["cluster_not_found_response_code"] == "NOT_FOUND"
    mappers = hcm(render_bootstrap(config))["local_reply_config"]["mappers"]
    unnamed = [
        m
        for m in mappers
        if NO_CLUSTER_DETAILS in m["filter"]["extension_filter"]["typed_config"]["expression"]
    ]
    openai = [m["body_format_override"]["json_format"] for m in unnamed]
    assert any(body.get("error", {}).get("code") == "route_not_found" for body in openai), openai


def test_without_a_route_limit_of_its_own_envoy_keeps_one_buffer_limit() -> None:
    assert body_limit_routes(default_with({})) == []


def test_envoy_accepts_the_buffer_routes(tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    assert_envoy_accepts(render_bootstrap_yaml(small_limits()), tmp_path)
