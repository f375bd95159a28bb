"""Host match: virtual hosts per provider or team on one listener, routed by `Host`.

The workshop's shape: `openai.gateway.local` and `anthropic.gateway.local` point
at the same Envoy listener; the same `POST /v1/chat/completions` goes to OpenAI
on one and is translated to Anthropic on the other. A team host
(`*.team.gateway.local`) serves a path no other host has, so an unknown host gets
the gateway's JSON 404. A key allowed only on the OpenAI host cannot reach the
Anthropic provider by changing the Host header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import GatewayLog, mock_requests, running_stack

OPENAI_HOST = "openai.gateway.local"
ANTHROPIC_HOST = "anthropic.gateway.local"
# Besides the default config's openai-host and anthropic-host routes.
HOST_ROUTES = """
  - name: team-host
    hosts: ["*.team.gateway.local"]
    path_prefix: /team
    model: gpt-4.1-nano
"""
HOST_KEYS = """
    - id: openai-only
      key: openai-only-key-7c1d
      allowed_routes: [openai-host]
"""
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "which host?"}]


@pytest.fixture(scope="module")
def host_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("hosts")
    text = DEFAULT_CONFIG.read_text()
    text = text.replace("\nroutes:\n", "\nroutes:" + HOST_ROUTES, 1)
    text = text.replace("\n  api_keys:\n", "\n  api_keys:" + HOST_KEYS, 1)
    config = workdir / "gateway.yaml"
    config.write_text(text)
    with running_stack(workdir, config) as running:
        yield running


def post(
    stack: LocalStack, host: str, path: str, body: dict[str, Any], key: str = "team1-key"
) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}",
        content=orjson.dumps(body),
        headers={"host": host, "authorization": f"Bearer {key}"},
        timeout=30,
    )


def route_of(stack: LocalStack, response: httpx.Response) -> str:
    [line] = GatewayLog(stack.gateway_log).for_request(response.headers["x-request-id"])
    route: str = line["route"]
    return route


def test_the_same_path_goes_to_the_provider_its_host_names(host_stack: LocalStack) -> None:
    client = OpenAI(
        base_url=f"{host_stack.base_url}/v1",
        api_key="team1-key",
        default_headers={"host": ANTHROPIC_HOST},
        max_retries=0,
    )
    raw = client.chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    assert raw.parse().object == "chat.completion"
    assert mock_requests(host_stack)[-1]["path"] == "/v1/messages"
    [line] = GatewayLog(host_stack.gateway_log).for_request(raw.headers["x-request-id"])
    assert (line["route"], line["provider"]) == ("anthropic-host", "mock-anthropic")

    on_openai = post(
        host_stack, OPENAI_HOST, "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}
    )
    assert on_openai.status_code == 200, on_openai.text
    assert mock_requests(host_stack)[-1]["path"] == "/v1/chat/completions"
    assert route_of(host_stack, on_openai) == "openai-host"


def test_a_host_serves_only_its_providers_models(host_stack: LocalStack) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES}
    response = post(host_stack, ANTHROPIC_HOST, "/v1/chat/completions", body)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "anthropic-host" in error["message"]


@pytest.mark.parametrize(
    "host",
    [f"{OPENAI_HOST}:10000", "OpenAI.Gateway.LOCAL", f"{OPENAI_HOST}.", "OPENAI.gateway.local:80"],
)
def test_the_host_matches_whatever_its_case_port_or_trailing_dot(
    host_stack: LocalStack, host: str
) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES}
    response = post(host_stack, host, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert route_of(host_stack, response) == "openai-host"


def test_a_path_no_host_route_has_falls_back_to_the_routes_of_every_host(
    host_stack: LocalStack,
) -> None:
    response = httpx.get(
        f"{host_stack.base_url}/v1/models",
        headers={"host": OPENAI_HOST, "authorization": "Bearer team1-key"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "list"
    # Another host (or none) keeps the config's host-less routes.
    response = post(
        host_stack,
        "gateway.example.com",
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES},
    )
    assert response.status_code == 200, response.text
    assert route_of(host_stack, response) == "openai-chat"


def test_a_wildcard_host_serves_every_team_subdomain(host_stack: LocalStack) -> None:
    response = post(host_stack, "red.team.gateway.local", "/team", {"messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-4.1-nano"
    assert route_of(host_stack, response) == "team-host"


@pytest.mark.parametrize("host", ["unknown.example.com", "team.gateway.local"])
def test_an_unknown_host_gets_the_gateways_json_404(host_stack: LocalStack, host: str) -> None:
    sent = len(mock_requests(host_stack))
    response = post(host_stack, host, "/team", {"messages": MESSAGES})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "route_not_found"
    assert len(mock_requests(host_stack)) == sent


def test_a_key_kept_to_one_host_cannot_reach_another_by_changing_host(
    host_stack: LocalStack,
) -> None:
    sent = len(mock_requests(host_stack))
    body = {"model": "claude-3-5-haiku-latest", "messages": MESSAGES}
    refused = post(
        host_stack, ANTHROPIC_HOST, "/v1/chat/completions", body, key="openai-only-key-7c1d"
    )
    assert refused.status_code == 403, refused.text
    assert len(mock_requests(host_stack)) == sent
    body = {"model": "gpt-4o", "messages": MESSAGES}
    allowed = post(
        host_stack, OPENAI_HOST, "/v1/chat/completions", body, key="openai-only-key-7c1d"
    )
    assert allowed.status_code == 200, allowed.text
