"""The exact routes the routing stage keeps per host and path: the same route, host by
host, as when each request was routed from scratch, and nothing a client made up kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.loader import load_config
from extproc.config.model import GatewayConfig
from extproc.headers import CLUSTER
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages import routing
from extproc.stages.pipeline import default_stages
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_controller_routes import chat, routed, with_attributes

KEY = {"authorization": "Bearer team1-key"}


@pytest.fixture
def runtime() -> Runtime:
    config: GatewayConfig = load_config(Path("config/gateway.yaml"), environ={})
    return Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))


@pytest.fixture
def gateway(runtime: Runtime) -> Processor:
    return Processor(lambda: runtime, default_stages())


async def cluster(gateway: Processor, path: str, host: str, model: str = "gpt-4o-mini") -> str:
    first = request_headers(path, headers={**KEY, ":authority": host})
    answers = await run_stream(gateway, [first, request_body(chat(model))])
    return routed(answers[1])[CLUSTER]


async def test_each_host_keeps_its_own_route_for_one_path(
    gateway: Processor, runtime: Runtime
) -> None:
    # The default config serves /v1/chat/completions on three routes: Anthropic's host's
    # (provider mock-anthropic), OpenAI's host's and every other host's (the model's).
    for _ in range(2):  # routed, then known
        assert await cluster(gateway, "/v1/chat/completions", "gateway") == "provider_mock"
        anthropic = await cluster(
            gateway,
            "/v1/chat/completions",
            "Anthropic.Gateway.Local:443",
            "claude-3-5-haiku-latest",
        )
        assert anthropic == "provider_mock_anthropic"
    assert {host for host, _ in runtime.known_paths} == {"gateway", "anthropic.gateway.local"}


async def test_a_path_a_client_made_up_is_not_kept(gateway: Processor, runtime: Runtime) -> None:
    # A prefix route's path names the model (or, mistyped, a key): routed, never kept.
    assert await cluster(gateway, "/openai/gpt-4o-mini", "gateway") == "provider_mock"
    await run_stream(gateway, [request_headers("/v1/chat/completions/", headers=KEY)])
    await run_stream(gateway, [request_headers("/V1/chat/completions", headers=KEY)])
    assert runtime.known_paths == {}


async def test_a_known_path_still_refuses_its_twins(gateway: Processor, runtime: Runtime) -> None:
    assert await cluster(gateway, "/v1/chat/completions", "gateway") == "provider_mock"
    assert runtime.known_paths
    for path in ("/v1/chat/completions/", "/V1/chat/completions"):
        [answer] = await run_stream(gateway, [request_headers(path, headers=KEY)])
        assert answer.immediate_response.status.code == 404


async def test_a_controllers_route_name_wins_over_a_known_path(gateway: Processor) -> None:
    assert await cluster(gateway, "/v1/chat/completions", "gateway") == "provider_mock"
    # The controller named the Anthropic route, kept to Anthropic's provider, for a path
    # the gateway knows as OpenAI's: an OpenAI model is not served there.
    first = with_attributes(
        request_headers("/v1/chat/completions", headers=KEY),
        route_name="httproute/ai/aigw-anthropic/rule/0/match/0/*",
    )
    answers = await run_stream(gateway, [first, request_body(chat("gpt-4o-mini"))])
    assert answers[-1].immediate_response.status.code == 404


async def test_hosts_past_the_bound_are_routed_not_kept(
    gateway: Processor, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing, "_KNOWN_PATHS", 2)
    for index in range(4):
        host = f"h{index}.example"
        assert await cluster(gateway, "/v1/chat/completions", host) == "provider_mock"
    assert len(runtime.known_paths) == 2
