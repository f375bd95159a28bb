"""The trust boundary as a client with a valid but narrow key attacks it.

A key that may use one model names another where the gateway also reads a model
(path, header, query) while its body names the allowed one; the rendered Envoy
bootstrap is checked for what would let a client's own headers steer Envoy
(routing, retries, timeouts, its request id, who counts as internal).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.envoy_bootstrap import render_bootstrap
from extproc.headers import CLUSTER
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

# team1 may use gpt-4o-mini alone; team2 is unrestricted.
NARROW_KEY = "      user_id: alice\n      group_id: engineering\n"


def narrow_config() -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text()
    assert NARROW_KEY in text
    text = text.replace(NARROW_KEY, NARROW_KEY + "      allowed_models: [gpt-4o-mini]\n", 1)
    return parse_config(text, "gateway.yaml", {})


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def send(path: str, headers: dict[str, str], body: bytes) -> list[Any]:
    sent = {"authorization": "Bearer team1-key", **headers}
    return await run_stream(
        processor_for(narrow_config()), [request_headers(path, headers=sent), request_body(body)]
    )


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/openai/gpt-4o", {}),
        ("/openai", {"model": "gpt-4o"}),
        ("/openai?model=gpt-4o", {}),
        # The path is the strongest: a header naming the allowed model does not help.
        ("/openai/gpt-4o", {"model": "gpt-4o-mini"}),
    ],
)
async def test_a_model_named_outside_the_body_is_the_one_checked(
    path: str, headers: dict[str, str]
) -> None:
    answers = await send(path, headers, chat("gpt-4o-mini"))
    refused = answers[-1].immediate_response
    assert refused.status.code == 403
    assert orjson.loads(refused.body)["error"]["code"] == "model_not_allowed"


async def test_the_provider_is_sent_the_model_that_was_checked() -> None:
    # The body names a model the key may not use; the path names one it may: the
    # provider must get the path's, or the body would be a way around the check.
    answers = await send("/openai/gpt-4o-mini", {}, chat("gpt-4o"))
    body_answer = answers[-1].request_body.response
    assert not answers[-1].HasField("immediate_response")
    sent = orjson.loads(body_answer.body_mutation.body)
    assert sent["model"] == "gpt-4o-mini"
    set_headers = {h.header.key for h in body_answer.header_mutation.set_headers}
    assert CLUSTER in set_headers


async def test_a_client_sent_routing_header_is_refused_on_every_route() -> None:
    answers = await send("/v1/chat/completions", {CLUSTER: "mock"}, chat("gpt-4o-mini"))
    refused = answers[0].immediate_response
    assert refused.status.code == 400
    assert CLUSTER in orjson.loads(refused.body)["error"]["message"]


# --- the rendered bootstrap -----------------------------------------------------------


def manager(config: GatewayConfig) -> dict[str, Any]:
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    found: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return found


def test_envoy_takes_no_client_for_an_internal_one() -> None:
    """Envoy honours x-envoy-max-retries, x-envoy-retry-on, x-envoy-upstream-rq-timeout-ms
    and a client's x-request-id only from clients it deems internal. Since Envoy 1.36
    none is without ``internal_address_config``; with one whose ``cidr_ranges`` is empty,
    loopback and RFC 1918 clients are (a pod network's are all RFC 1918). Nor may the
    connection manager trust an x-forwarded-for hop the client wrote."""
    hcm = manager(narrow_config())
    assert hcm["use_remote_address"] is True
    assert "internal_address_config" not in hcm
    assert not hcm.get("xff_num_trusted_hops")
    assert "original_ip_detection_extensions" not in hcm
    assert not hcm.get("preserve_external_request_id")
    assert not hcm.get("skip_xff_append")


def test_every_route_to_an_upstream_needs_the_gateways_routing_header() -> None:
    hcm = manager(narrow_config())
    stripped = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {"remove": CLUSTER} in stripped
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    upstream = [route for route in routes if "route" in route]
    assert upstream
    for route in upstream:
        names = [header["name"] for header in route["match"].get("headers", [])]
        # Either matched on the header, or taking its cluster from it (the per-path
        # body-limit routes, matched before the gateway names one): without the
        # gateway's header, which no client can send, neither reaches an upstream.
        named_by_header = route["route"].get("cluster_header") == CLUSTER
        assert CLUSTER in names or named_by_header, route["name"]
        if named_by_header:
            assert route["route"]["cluster_not_found_response_code"] == "NOT_FOUND"
    assert routes[-1]["match"] == {"prefix": "/"} and "direct_response" in routes[-1]


def test_the_gateway_failing_lets_nothing_through_by_default() -> None:
    filters = manager(narrow_config())["http_filters"]
    ext_proc = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    assert ext_proc["typed_config"]["failure_mode_allow"] is False


# --- the provider's credential in its own answer ----------------------------------------

PROVIDER_KEY = "Zq4vPROVIDERkey-openai-7d1c0e5aW9x3"
# Envoy's router marks a provider's answer with this header.
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}


@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat("gpt-4o-mini")),  # OpenAI's API, passed through
        ("/anthropic", chat("claude-3-5-haiku-latest")),  # translated for an OpenAI client
    ],
    ids=["passed-through", "translated"],
)
async def test_a_provider_quoting_the_gateways_key_in_an_error_shows_the_client_none_of_it(
    status: int, path: str, body: bytes
) -> None:
    """A provider (a proxy in front of a model server, a server in debug mode) whose error
    quotes the request's headers back: the client gets the error, not the gateway's key."""
    config = parse_config(
        DEFAULT_CONFIG.read_text(), "gateway.yaml", {"MOCK_LLM_API_KEY": PROVIDER_KEY}
    )
    error = orjson.dumps(
        {
            "error": {
                "message": f"bad request; headers: Authorization: Bearer {PROVIDER_KEY},"
                f" x-api-key: {PROVIDER_KEY}",
                "type": "invalid_request_error",
            }
        }
    )
    answers = await run_stream(
        processor_for(config),
        [
            request_headers(path, headers={"authorization": "Bearer team1-key"}),
            request_body(body),
            response_headers(status, FROM_PROVIDER),
            response_body(error),
        ],
    )
    assert not any(a.HasField("immediate_response") for a in answers)
    shown = client_body([error], answers)
    assert PROVIDER_KEY.encode() not in shown
    assert b"bad request" in shown  # the provider's words still reach the client
