"""Routing by host, path, header and query: what an operator writes and what a client gets.

The flows themselves run against the real Envoy in
tests/integration/test_routing_review*.py; these check the rules one by one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import ConfigError, load_config
from extproc.config.model import GatewayConfig
from extproc.gateway_api import CONTROLLERS, render_attachments
from extproc.headers import CLUSTER
from extproc.hosts import request_host
from extproc.processor import Processor
from extproc.runtime import HostRoutes, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import processor_for, request_body, request_headers, run_stream

DEFAULT = Path("config/gateway.yaml")
HOST_ROUTES: list[dict[str, Any]] = [
    {"name": "openai-host", "hosts": ["OpenAI.Gateway.Local."], "path": "/v1/chat/completions",
     "provider": "mock"},
    {"name": "anthropic-host", "hosts": ["anthropic.gateway.local"],
     "path": "/v1/chat/completions", "provider": "mock-anthropic"},
    {"name": "teams", "hosts": ["*.team.gateway.local"], "path_prefix": "/team"},
    {"name": "red-team", "hosts": ["*.red.team.gateway.local"], "path_prefix": "/team"},
]  # fmt: skip


def config_with(tmp_path: Path, routes: list[dict[str, Any]]) -> GatewayConfig:
    raw = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    # The default config's own host routes give way to the test's.
    raw["routes"] = routes + [route for route in raw["routes"] if not route.get("hosts")]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(path, environ={})


@pytest.fixture
def hosted(tmp_path: Path) -> GatewayConfig:
    return config_with(tmp_path, HOST_ROUTES)


# --- config -------------------------------------------------------------------------


def test_hosts_are_compared_in_lower_case_without_a_trailing_dot(hosted: GatewayConfig) -> None:
    route = next(r for r in hosted.routes if r.name == "openai-host")
    assert route.hosts == ("openai.gateway.local",)


@pytest.mark.parametrize(
    "host",
    ["openai.gateway.local:8080", "http://openai.gateway.local", "*", "a.*.local", "*foo.local",
     "open ai.local", "openai.gateway.local/v1", ""],
)  # fmt: skip
def test_a_host_that_is_not_a_name_or_wildcard_is_refused_by_field(
    tmp_path: Path, host: str
) -> None:
    routes = [{"name": "h", "hosts": [host], "path": "/h"}]
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, routes)
    assert "routes[0].hosts" in str(caught.value)


def test_one_host_and_path_on_two_routes_is_refused(tmp_path: Path) -> None:
    routes = [
        {"name": "a", "hosts": ["x.local"], "path": "/chat"},
        {"name": "b", "hosts": ["y.local", "X.local"], "path": "/chat"},
    ]
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, routes)
    assert "routes[1].hosts: x.local already has this path on routes[0] (a)" in str(caught.value)


# --- which route -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("OpenAI.Gateway.Local:10000", "openai.gateway.local"),
        ("openai.gateway.local.", "openai.gateway.local"),
        ("[::1]:10000", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        (None, ""),
    ],
)
def test_the_request_host_drops_case_port_and_trailing_dot(
    authority: str | None, host: str
) -> None:
    assert request_host(authority) == host


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("openai.gateway.local", "/v1/chat/completions", "openai-host"),
        ("anthropic.gateway.local", "/v1/chat/completions", "anthropic-host"),
        # The host's routes do not serve the path: the routes of every host do.
        ("openai.gateway.local", "/v1/models", "openai-models"),
        ("openai.gateway.local", "/openai/gpt-4o", "openai"),
        ("elsewhere.local", "/v1/chat/completions", "openai-chat"),
        # The longest wildcard wins; a wildcard needs at least one more label.
        ("a.team.gateway.local", "/team/x", "teams"),
        ("a.b.team.gateway.local", "/team", "teams"),
        ("a.red.team.gateway.local", "/team", "red-team"),
        ("team.gateway.local", "/team", None),
        ("elsewhere.local", "/team", None),
    ],
)
def test_the_host_picks_its_routes_first_then_the_path(
    hosted: GatewayConfig, host: str, path: str, route: str | None
) -> None:
    found = HostRoutes(hosted).resolve(host, path)
    assert (found.name if found else None) == route


def chat(model: str = "gpt-4o") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def processor(config: GatewayConfig) -> Processor:
    return processor_for(config, Services(GatewayMetrics(), AccessLog(stdout=False)))


def header_values(answer: Any) -> dict[str, str]:
    common = answer.request_body.response
    return {
        option.header.key: option.header.raw_value.decode()
        for option in common.header_mutation.set_headers
    }


async def test_the_same_path_on_another_host_reaches_another_provider(
    hosted: GatewayConfig,
) -> None:
    gateway = processor(hosted)
    headers = {"authorization": "Bearer team1-key", ":authority": "Anthropic.Gateway.Local:443"}
    answers = await run_stream(
        gateway,
        [
            request_headers("/v1/chat/completions", headers=headers),
            request_body(chat("claude-3-5-haiku-latest")),
        ],
    )
    assert header_values(answers[1])[CLUSTER] == "provider_mock_anthropic"
    headers[":authority"] = "openai.gateway.local"
    answers = await run_stream(
        gateway,
        [request_headers("/v1/chat/completions", headers=headers), request_body(chat())],
    )
    assert header_values(answers[1])[CLUSTER] == "provider_mock"


@pytest.mark.parametrize(
    ("host", "ai"), [("nobody.example", False), ("a.team.gateway.local", True)]
)
async def test_an_unknown_host_on_a_hosted_path_is_not_ai_traffic(
    hosted: GatewayConfig, host: str, ai: bool
) -> None:
    headers = {"authorization": "Bearer team1-key", ":authority": host}
    [answer] = await run_stream(processor(hosted), [request_headers("/team", headers=headers)])
    # Not AI traffic skips every later phase (Envoy then answers its JSON 404,
    # route_not_found); on the team's host the key is checked and taken off.
    skipped = answer.mode_override.response_header_mode == 2  # SKIP
    removed = answer.request_headers.response.header_mutation.remove_headers
    assert (skipped, "authorization" in removed) == (not ai, ai)


# --- the model named outside the body -----------------------------------------------------


@pytest.mark.parametrize(
    "query", ["model=gpt-4o&model=gpt-4.1-nano", "model=gpt-4o&x=1&model=gpt-4o-mini"]
)
async def test_a_query_naming_two_models_is_a_400(config: GatewayConfig, query: str) -> None:
    headers = {"authorization": "Bearer team1-key"}
    [answer] = await run_stream(
        processor(config), [request_headers(f"/openai?{query}", headers=headers)]
    )
    assert answer.immediate_response.status.code == 400
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert (error["code"], error["param"]) == ("ambiguous_model", "model")


@pytest.mark.parametrize(
    ("query", "model"),
    [("model=gpt-4o&model=gpt-4o", "gpt-4o"), ("model=&x=1", "gpt-4o-mini"),
     ("model=gpt%2D4o", "gpt-4o")],
)  # fmt: skip
async def test_a_query_naming_one_model_or_none_is_served(
    config: GatewayConfig, query: str, model: str
) -> None:
    gateway = processor(config)
    headers = {"authorization": "Bearer team1-key"}
    answers = await run_stream(
        gateway,
        [request_headers(f"/openai?{query}", headers=headers), request_body(chat("gpt-4o-mini"))],
    )
    body = answers[1].request_body.response.body_mutation.body
    sent = orjson.loads(body) if body else {"model": "gpt-4o-mini"}
    assert sent["model"] == model


def with_header_repeated(path: str, name: str, values: list[str]) -> ext.ProcessingRequest:
    """Request headers carrying ``name`` once per value, as Envoy hands a header the client
    (or a proxy in front) sent more than once: one entry each."""
    message = request_headers(path, headers={"authorization": "Bearer team1-key"})
    for value in values:
        header = message.request_headers.headers.headers.add()
        header.key, header.raw_value = name, value.encode()
    return message


@pytest.mark.parametrize(
    ("values", "model"),
    [(["gpt-4o", "gpt-4o"], "gpt-4o"), (["gpt-4o", ""], "gpt-4o"), (["gpt-4o, gpt-4o"], "gpt-4o")],
)
async def test_a_model_header_sent_twice_with_one_name_is_that_model(
    config: GatewayConfig, values: list[str], model: str
) -> None:
    # A proxy that sets the header the client set too: the same model, not a 404 for a
    # model named "gpt-4o,gpt-4o".
    answers = await run_stream(
        processor(config),
        [with_header_repeated("/openai", "model", values), request_body(chat("gpt-4o-mini"))],
    )
    assert not any(answer.HasField("immediate_response") for answer in answers)
    assert orjson.loads(answers[1].request_body.response.body_mutation.body)["model"] == model


async def test_a_model_header_naming_two_models_is_a_400_like_the_query(
    config: GatewayConfig,
) -> None:
    [answer] = await run_stream(
        processor(config), [with_header_repeated("/openai", "model", ["gpt-4o", "gpt-4.1-nano"])]
    )
    assert answer.immediate_response.status.code == 400
    error = orjson.loads(answer.immediate_response.body)["error"]
    assert (error["code"], error["param"]) == ("ambiguous_model", "model")
    assert error["message"] == "the 'model' header names more than one model; name one"


# --- Gateway API attachments ---------------------------------------------------------------


def host_rank(hostnames: list[str], host: str) -> tuple[int, int] | None:
    """Gateway API's hostname precedence for one route: None when it does not match."""
    if not hostnames:
        return (0, 0)
    best: tuple[int, int] | None = None
    for name in hostnames:
        if name == host:
            rank = (2, len(name))
        elif name.startswith("*.") and host.endswith(name[1:]):
            rank = (1, len(name))
        else:
            continue
        best = rank if best is None or rank > best else best
    return best


def best_route(
    manifests: list[dict[str, Any]], host: str, path: str, headers: dict[str, str]
) -> str:
    """The HTTPRoute Envoy would pick: hostname first, then exact/prefix path, then headers."""
    candidates = []
    for manifest in manifests:
        if manifest["kind"] != "HTTPRoute":
            continue
        rank = host_rank(manifest["spec"].get("hostnames", []), host)
        if rank is None:
            continue
        for rule in manifest["spec"]["rules"]:
            for match in rule["matches"]:
                kind, value = match["path"]["type"], match["path"]["value"]
                if kind == "Exact" and path != value:
                    continue
                if kind == "PathPrefix" and not (
                    value == "/" or path == value or path.startswith(value.rstrip("/") + "/")
                ):
                    continue
                if kind == "RegularExpression" and not re.fullmatch(value, path):
                    continue
                wanted = match.get("headers", [])
                if any(
                    headers.get(h["name"].lower()) is None
                    or (h["type"] == "Exact" and headers[h["name"].lower()] != h["value"])
                    for h in wanted
                ):
                    continue
                kinds = {"Exact": 3, "RegularExpression": 2, "PathPrefix": 1}
                order = (rank, kinds[kind], len(value), len(wanted))
                candidates.append((order, manifest["metadata"]["name"]))
    assert candidates, (host, path)
    return max(candidates)[1]


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_gateway_api_routes_keep_their_hosts_and_still_reach_the_provider(
    hosted: GatewayConfig, controller: Any
) -> None:
    manifests = render_attachments(hosted, controller)
    client = next(m for m in manifests if m["metadata"]["name"] == "aigw-anthropic-host")
    assert client["spec"]["hostnames"] == ["anthropic.gateway.local"]
    host, path = "anthropic.gateway.local", "/v1/chat/completions"
    assert best_route(manifests, host, path, {}) == "aigw-anthropic-host"
    # Once the gateway has set the routing header, a provider rule must win on that host too.
    routed = {CLUSTER: "provider_mock_anthropic"}
    for upstream_path in (path, "/v1/messages"):
        assert best_route(manifests, host, upstream_path, routed) == "aigw-providers-hosts"
    assert best_route(manifests, "x.red.team.gateway.local", "/team", routed) == (
        "aigw-providers-hosts"
    )
    assert best_route(manifests, "elsewhere.local", path, routed) == "aigw-providers"


def test_more_hosts_than_gateway_api_allows_is_refused_at_render(tmp_path: Path) -> None:
    routes = [
        {"name": f"h{i}", "hosts": [f"team{i}.gateway.local"], "path": "/h"} for i in range(17)
    ]
    config = config_with(tmp_path, routes)
    with pytest.raises(ValueError, match="16 hostnames per HTTPRoute"):
        render_attachments(config, "envoy-gateway")


@pytest.mark.parametrize("base", ["/openai/v1", "/openai"])
@pytest.mark.parametrize("endpoint", ["embeddings", "responses"])
def test_the_built_in_routes_serve_an_sdk_based_at_the_openai_prefix(
    tmp_path: Path, base: str, endpoint: str
) -> None:
    # Without `routes:`, an SDK whose base_url is the /openai prefix reaches the
    # endpoint's API, not the chat route that owns the prefix.
    raw = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    del raw["routes"]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    config = load_config(path, environ={})
    found = HostRoutes(config).resolve("gateway.local", f"{base}/{endpoint}")
    assert found is not None
    assert found.api.value == f"openai_{endpoint}"
