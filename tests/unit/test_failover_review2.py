"""Failover, a second review: what an operator reads of the attempts Envoy retries.

Envoy decides whether to retry an attempt on the next member by the status the
per-attempt filter hands it, which is the translated one: an Anthropic, Bedrock or
Vertex provider's refusal of the gateway's credentials (401, 403) reaches Envoy as the
gateway's 502, a Bedrock ``ModelTimeoutException`` (408) as a 504, an answer that could
not be translated as a 502. Each such attempt is retried, and the client never sees its
error, so ``aigw_upstream_errors_total`` must count it there (under the provider's own
status, as the downstream filter labels the last attempt's); and an error Envoy does
not retry is the client's answer, counted downstream alone."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml

from extproc.config import parse_config
from extproc.context import PhaseOutput
from extproc.envoy_bootstrap import render_bootstrap
from extproc.envoy_failover import failover_cluster_name, pinned_cluster_name
from extproc.runtime import Runtime, Services
from tests.unit.test_openai_failover import (
    DEFAULT,
    admitted,
    attempt,
    config,
    upstream_errors,
)

CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}]}
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"


async def admitted_chat(services: Services) -> tuple[Runtime, dict[str, Any]]:
    """A chat completion of ``gpt-main``: the mock, then Claude on Anthropic, then the
    same model in Europe."""
    cfg = config()
    _, body = await admitted(cfg, services, CHAT, CHAT_BODY)
    return Runtime(cfg, services), body


@pytest.mark.parametrize("status", ["401", "403"])
async def test_a_refused_credential_envoy_retries_as_a_502_counts_as_an_upstream_error(
    services: Services, status: str
) -> None:
    """Anthropic refuses the gateway's key: its attempt hands Envoy a 502, which Envoy
    retries in Europe. Without the count, a revoked key behind a chain is silent: every
    request fails over and no metric names the provider that refused it."""
    runtime, body = await admitted_chat(services)
    ctx, _, stage = attempt(runtime, "mock-anthropic", CHAT, body)
    out = PhaseOutput()
    stage.response_headers(ctx, out, {":status": status, "content-type": "application/json"})
    assert out.set_headers[":status"] == "502"  # what Envoy retries on
    assert upstream_errors(services) == {("mock-anthropic", "gpt-main", status): 1.0}


async def test_an_answer_the_attempt_could_not_translate_counts_when_envoy_retries_it(
    services: Services,
) -> None:
    """Garbage from Anthropic: the attempt turns the held 200 into a 502 (retried), as a
    request without failover counts it (the client's 502)."""
    runtime, body = await admitted_chat(services)
    ctx, _, stage = attempt(runtime, "mock-anthropic", CHAT, body)
    stage.response_headers(
        ctx, PhaseOutput(), {":status": "200", "content-type": "application/json"}
    )
    out = PhaseOutput()
    stage.response_body(ctx, out, b"<html>not json</html>", True)
    assert out.set_headers[":status"] == "502"
    assert upstream_errors(services) == {("mock-anthropic", "gpt-main", "502"): 1.0}


async def test_an_error_envoy_does_not_retry_is_left_to_the_downstream_filter(
    services: Services,
) -> None:
    """Anthropic's 400 stays a 400: the client's answer, which the downstream filter
    counts; counted here too it would be counted twice."""
    runtime, body = await admitted_chat(services)
    ctx, _, stage = attempt(runtime, "mock-anthropic", CHAT, body)
    out = PhaseOutput()
    stage.response_headers(ctx, out, {":status": "400", "content-type": "application/json"})
    stage.response_body(
        ctx,
        PhaseOutput(),
        orjson.dumps({"type": "error", "error": {"type": "invalid_request_error"}}),
        True,
    )
    assert upstream_errors(services) == {}


def test_a_pinned_route_waits_as_long_as_its_fallbacks_provider_allows() -> None:
    """A response a fallback stored is continued there alone, on a route of its own: that
    one attempt is the fallback provider's, so its ``timeout_s`` bounds it, as on a
    request naming the fallback's model. The primary's (here far shorter, to fail over
    fast) cut a long continuation with a 504 that the fallback's own route would not."""
    raw = yaml.safe_load(DEFAULT)
    raw["providers"] += [
        {"name": "fast", "base_url": "http://127.0.0.1:1/v1", "api_key": "k", "timeout_s": 2},
        {"name": "patient", "base_url": "http://127.0.0.1:1/v1", "api_key": "k",
         "timeout_s": 240},
    ]  # fmt: skip
    raw["models"] += [
        {"name": "gpt-fast", "provider": "fast", "upstream_model": "gpt-4o",
         "fallbacks": ["gpt-patient"]},
        {"name": "gpt-patient", "provider": "patient", "upstream_model": "gpt-4o"},
    ]  # fmt: skip
    cfg = parse_config(yaml.safe_dump(raw), "test", {})
    manager = render_bootstrap(cfg)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    routes = {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    pinned = routes[pinned_cluster_name("gpt-fast", 0)]["route"]["retry_policy"]
    assert pinned["per_try_timeout"] == "240s"
    # The chain's own route keeps the primary's: a slow primary fails over soon.
    chain = routes[failover_cluster_name("gpt-fast")]["route"]["retry_policy"]
    assert chain["per_try_timeout"] == "2s"
